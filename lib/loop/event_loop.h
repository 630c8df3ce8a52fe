// The one event loop of `pkirelay run`: an epoll set of file descriptors (inotify, libcurl's
// sockets, a signalfd) and a heap of timers on the monotonic clock. Single-threaded by design
// (../shared/STYLE.md, after curl's ephiperfifo.c): every stage runs from this loop's callbacks,
// so no stage ever blocks another and nothing needs a lock.
//
// Callbacks may watch, unwatch, add timers and defer work freely, including from inside another
// callback; work deferred with defer() runs after the I/O of the current turn, which is how
// stages group what became ready together into one batch (one transaction, one fsync).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <unordered_map>
#include <vector>

#include "lib/file_io.h"

namespace pkirelay {

class EventLoop {
public:
    using Millis = std::int64_t;
    using IoCallback = std::function<void(std::uint32_t events)>; // EPOLLIN, EPOLLOUT, ...
    using TimerId = std::uint64_t;

    EventLoop();
    EventLoop(const EventLoop &) = delete;
    EventLoop &operator=(const EventLoop &) = delete;

    // Watches fd for events (EPOLLIN / EPOLLOUT), replacing an earlier watch of the same fd.
    void watch(int fd, std::uint32_t events, IoCallback callback);
    // Forgets fd; harmless when it is not watched or already closed.
    void unwatch(int fd);

    // Runs callback once, delay milliseconds from now (0: in the next turn, after the I/O).
    TimerId after(Millis delay, std::function<void()> callback);
    void cancel(TimerId id);

    // Runs callback at the end of the current turn (or of the next one, when called outside a
    // turn). Each call is one run: deferring the same work twice runs it twice.
    void defer(std::function<void()> callback);

    // One turn: waits for I/O or the next timer (at most maxWait ms, -1 for no bound; 0 when
    // deferred work is waiting), then runs what became ready: I/O callbacks, due timers,
    // deferred work.
    void turn(Millis maxWait = -1);

    // Turns until stop() is called.
    void run();
    void stop() { stopped_ = true; }
    bool stopped() const { return stopped_; }

    // Monotonic milliseconds (CLOCK_MONOTONIC): what timers count in.
    static Millis monotonicNow();

private:
    Fd epoll_;
    std::unordered_map<int, std::shared_ptr<IoCallback>> io_;
    std::multimap<Millis, TimerId> timerOrder_;
    std::unordered_map<TimerId, std::pair<Millis, std::function<void()>>> timers_;
    TimerId nextTimer_ = 1;
    std::vector<std::function<void()>> deferred_;
    bool stopped_ = false;
};

} // namespace pkirelay

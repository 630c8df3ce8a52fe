// epoll and a timer heap: the implementation of event_loop.h.
#include "lib/loop/event_loop.h"

#include <algorithm>
#include <cerrno>
#include <ctime>
#include <sys/epoll.h>

namespace pkirelay {

EventLoop::EventLoop() : epoll_(::epoll_create1(EPOLL_CLOEXEC)) {
    if (epoll_.get() < 0)
        throw IoError("epoll_create1", errno);
}

EventLoop::Millis EventLoop::monotonicNow() {
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<Millis>(ts.tv_sec) * 1000 + ts.tv_nsec / 1'000'000;
}

void EventLoop::watch(int fd, std::uint32_t events, IoCallback callback) {
    epoll_event ev{};
    ev.events = events;
    ev.data.fd = fd;
    const bool known = io_.contains(fd);
    if (::epoll_ctl(epoll_.get(), known ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ev) != 0) {
        // The kernel drops a closed descriptor from the set by itself, so a number we still
        // list may be a new descriptor (MOD fails with ENOENT), or one we do not list may still
        // be in the set (ADD fails with EEXIST): try the other operation once.
        if (::epoll_ctl(epoll_.get(), known ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd, &ev) != 0)
            throw IoError("epoll_ctl", errno);
    }
    // A callback may replace its own watch while it runs: the old one stays alive until the
    // dispatch that called it returns (shared_ptr held there).
    io_[fd] = std::make_shared<IoCallback>(std::move(callback));
}

void EventLoop::unwatch(int fd) {
    if (io_.erase(fd) > 0)
        ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr); // EBADF when already closed
}

EventLoop::TimerId EventLoop::after(Millis delay, std::function<void()> callback) {
    const TimerId id = nextTimer_++;
    const Millis due = monotonicNow() + (delay > 0 ? delay : 0);
    timers_.emplace(id, std::make_pair(due, std::move(callback)));
    timerOrder_.emplace(due, id);
    return id;
}

void EventLoop::cancel(TimerId id) {
    auto it = timers_.find(id);
    if (it == timers_.end())
        return;
    auto [lo, hi] = timerOrder_.equal_range(it->second.first);
    for (auto o = lo; o != hi; ++o)
        if (o->second == id) {
            timerOrder_.erase(o);
            break;
        }
    timers_.erase(it);
}

void EventLoop::defer(std::function<void()> callback) {
    deferred_.push_back(std::move(callback));
}

void EventLoop::turn(Millis maxWait) {
    Millis wait = maxWait;
    if (!deferred_.empty())
        wait = 0;
    if (!timerOrder_.empty()) {
        const Millis untilTimer = std::max<Millis>(0, timerOrder_.begin()->first - monotonicNow());
        if (wait < 0 || untilTimer < wait)
            wait = untilTimer;
    }
    constexpr int maxEvents = 64;
    epoll_event events[maxEvents];
    int n = ::epoll_wait(epoll_.get(), events, maxEvents, static_cast<int>(wait));
    if (n < 0) {
        if (errno != EINTR)
            throw IoError("epoll_wait", errno);
        n = 0;
    }
    for (int i = 0; i < n; ++i) {
        auto it = io_.find(events[i].data.fd);
        if (it == io_.end())
            continue; // unwatched by an earlier callback of this turn
        auto callback = it->second;
        (*callback)(events[i].events);
    }
    // Due timers, in order; a timer added by one of them for "now" waits for the next turn, so a
    // timer that re-arms itself with no delay cannot starve the loop.
    const Millis now = monotonicNow();
    std::vector<TimerId> due;
    for (auto it = timerOrder_.begin(); it != timerOrder_.end() && it->first <= now; ++it)
        due.push_back(it->second);
    for (TimerId id : due) {
        auto it = timers_.find(id);
        if (it == timers_.end())
            continue; // cancelled by an earlier timer of this turn
        auto callback = std::move(it->second.second);
        cancel(id);
        callback();
    }
    // Deferred work may defer more; that runs in the next turn.
    auto work = std::move(deferred_);
    deferred_.clear();
    for (auto &w : work)
        w();
}

void EventLoop::run() {
    stopped_ = false;
    while (!stopped_)
        turn();
}

} // namespace pkirelay

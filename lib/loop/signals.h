// Signals as events of the loop (signalfd): SIGTERM/SIGINT stop, SIGHUP reloads. They are blocked
// for the whole process and read from a descriptor, never handled asynchronously, so a stage in
// the middle of a transaction finishes it before the signal is seen.
#pragma once

#include <functional>
#include <initializer_list>
#include <signal.h>

#include "lib/file_io.h"
#include "lib/loop/event_loop.h"

namespace pkirelay {

class SignalEvents {
public:
    // Blocks the signals and watches them on loop; onSignal gets each signal number.
    SignalEvents(EventLoop &loop, std::initializer_list<int> signals,
                 std::function<void(int)> onSignal);
    ~SignalEvents();
    SignalEvents(const SignalEvents &) = delete;
    SignalEvents &operator=(const SignalEvents &) = delete;

private:
    EventLoop &loop_;
    Fd fd_;
    std::function<void(int)> onSignal_;
};

} // namespace pkirelay

// signalfd behind SignalEvents (signals.h).
#include "lib/loop/signals.h"

#include <cerrno>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <unistd.h>

namespace pkirelay {

SignalEvents::SignalEvents(EventLoop &loop, std::initializer_list<int> signals,
                           std::function<void(int)> onSignal)
    : loop_(loop), onSignal_(std::move(onSignal)) {
    sigset_t set;
    sigemptyset(&set);
    for (int s : signals)
        sigaddset(&set, s);
    // Blocked before the descriptor exists, so a signal sent meanwhile waits for it.
    ::pthread_sigmask(SIG_BLOCK, &set, nullptr);
    fd_ = Fd(::signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC));
    if (fd_.get() < 0)
        throw IoError("signalfd", errno);
    loop_.watch(fd_.get(), EPOLLIN, [this](std::uint32_t) {
        signalfd_siginfo info{};
        while (::read(fd_.get(), &info, sizeof info) == static_cast<ssize_t>(sizeof info))
            onSignal_(static_cast<int>(info.ssi_signo));
    });
}

SignalEvents::~SignalEvents() {
    loop_.unwatch(fd_.get());
}

} // namespace pkirelay

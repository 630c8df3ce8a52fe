// Child processes and loopback sockets for tests (see peer.h). POSIX only: fork/exec with the
// child in its own process group, a pipe for its output, pidfd to wait for its exit with a
// deadline instead of sleeping.
#include "peer.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <system_error>

namespace pkirelay::test {
namespace {

using Clock = std::chrono::steady_clock;

[[noreturn]] void throwErrno(const std::string &what) {
    throw std::system_error(errno, std::generic_category(), what);
}

int msLeft(Clock::time_point deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    return left.count() < 0 ? 0 : static_cast<int>(left.count());
}

std::string joined(const std::vector<std::string> &argv) {
    std::string s;
    for (const auto &a : argv)
        s += (s.empty() ? "" : " ") + a;
    return s;
}

} // namespace

Fd &Fd::operator=(Fd &&other) noexcept {
    if (this != &other) {
        reset();
        fd_ = other.release();
    }
    return *this;
}

int Fd::release() noexcept {
    int fd = fd_;
    fd_ = -1;
    return fd;
}

void Fd::reset() noexcept {
    if (fd_ >= 0)
        ::close(fd_);
    fd_ = -1;
}

TempDir::TempDir() {
    const char *base = std::getenv("TMPDIR");
    std::string pattern =
        std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/pkirelay-test.XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr)
        throwErrno("mkdtemp " + pattern);
    path_ = pattern;
}

TempDir::~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
}

Peer::Peer(const std::vector<std::string> &argv, const PeerOptions &options) {
    if (argv.empty())
        throw std::invalid_argument("Peer: empty command");
    // Everything the child needs is prepared before fork: it may only call async-signal-safe
    // functions afterwards.
    std::vector<char *> args;
    for (const auto &a : argv)
        args.push_back(const_cast<char *>(a.c_str()));
    args.push_back(nullptr);
    std::string cwd = options.cwd.string();

    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0)
        throwErrno("pipe2");
    Fd readEnd(fds[0]), writeEnd(fds[1]);
    Fd devNull(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    if (devNull.get() < 0)
        throwErrno("open /dev/null");

    pid_ = ::fork();
    if (pid_ < 0)
        throwErrno("fork");
    if (pid_ == 0) {
        ::setpgid(0, 0);
        ::dup2(devNull.get(), 0);
        ::dup2(writeEnd.get(), 1);
        if (options.captureStderr)
            ::dup2(writeEnd.get(), 2);
        if (!cwd.empty() && ::chdir(cwd.c_str()) != 0)
            ::_exit(126);
        ::execvp(args[0], args.data());
        const char msg[] = "peer: exec failed\n";
        [[maybe_unused]] auto n = ::write(1, msg, sizeof msg - 1);
        ::_exit(127);
    }
    ::setpgid(pid_, pid_); // also here, so the group exists before any kill() below
    out_ = std::move(readEnd);
}

Peer::~Peer() {
    try {
        stop();
    } catch (...) {
        // A destructor must not throw; the child has been signalled as far as possible.
    }
}

std::optional<std::string> Peer::readLine(std::chrono::milliseconds timeout) {
    auto deadline = Clock::now() + timeout;
    for (;;) {
        if (auto nl = buffer_.find('\n'); nl != std::string::npos) {
            std::string line = buffer_.substr(0, nl);
            buffer_.erase(0, nl + 1);
            transcript_ += line + "\n";
            return line;
        }
        if (eof_) {
            if (buffer_.empty())
                return std::nullopt;
            std::string line = std::move(buffer_);
            buffer_.clear();
            transcript_ += line + "\n";
            return line;
        }
        pollfd p{out_.get(), POLLIN, 0};
        int n = ::poll(&p, 1, msLeft(deadline));
        if (n < 0 && errno != EINTR)
            throwErrno("poll");
        if (n == 0)
            return std::nullopt;
        char chunk[4096];
        ssize_t got = ::read(out_.get(), chunk, sizeof chunk);
        if (got < 0 && errno != EINTR)
            throwErrno("read");
        if (got == 0)
            eof_ = true;
        if (got > 0)
            buffer_.append(chunk, static_cast<std::size_t>(got));
    }
}

std::string Peer::waitForLine(const std::function<bool(std::string_view)> &match,
                              std::chrono::milliseconds timeout) {
    auto deadline = Clock::now() + timeout;
    for (;;) {
        auto line = readLine(std::chrono::milliseconds(msLeft(deadline)));
        if (!line)
            throw std::runtime_error("peer " + std::to_string(pid_) +
                                     ": expected line not seen; output:\n" + transcript_ + buffer_);
        if (match(*line))
            return *line;
    }
}

std::optional<int> Peer::wait(std::chrono::milliseconds timeout) {
    if (status_)
        return status_;
    int status = 0;
    pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == 0 && timeout.count() > 0) {
        // Wait on a pidfd: it becomes readable when the child exits, with no polling loop.
        // Via syscall(): glibc 2.36's <sys/pidfd.h> lacks extern "C" and does not link from C++.
        Fd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid_, 0)));
        if (pidfd.get() >= 0) {
            pollfd p{pidfd.get(), POLLIN, 0};
            ::poll(&p, 1, static_cast<int>(timeout.count()));
        }
        r = ::waitpid(pid_, &status, WNOHANG);
    }
    if (r == pid_) {
        status_ = status;
        // Anything the child left running in its group (e.g. an openssl it spawned) goes too.
        ::kill(-pid_, SIGKILL);
    }
    return status_;
}

int Peer::stop() {
    if (auto s = wait(std::chrono::milliseconds(0)))
        return *s;
    ::kill(-pid_, SIGTERM);
    if (auto s = wait(std::chrono::seconds(1)))
        return *s;
    ::kill(-pid_, SIGKILL);
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    status_ = status;
    return status;
}

RunResult run(const std::vector<std::string> &argv, std::chrono::milliseconds timeout,
              const PeerOptions &options) {
    auto deadline = Clock::now() + timeout;
    Peer peer(argv, options);
    std::string output;
    while (auto line = peer.readLine(std::chrono::milliseconds(msLeft(deadline))))
        output += *line + "\n";
    auto status = peer.wait(std::chrono::milliseconds(msLeft(deadline)));
    if (!status)
        throw std::runtime_error("timed out: " + joined(argv) + "\n" + output);
    RunResult r;
    r.exitCode = WIFEXITED(*status) ? WEXITSTATUS(*status) : -1;
    r.output = std::move(output);
    return r;
}

std::string runOk(const std::vector<std::string> &argv, std::chrono::milliseconds timeout,
                  const PeerOptions &options) {
    RunResult r = run(argv, timeout, options);
    if (r.exitCode != 0)
        throw std::runtime_error("failed (" + std::to_string(r.exitCode) + "): " + joined(argv) +
                                 "\n" + r.output);
    return r.output;
}

std::vector<std::uint8_t> readFile(const std::filesystem::path &path) {
    std::ifstream in(path, std::ios::binary);
    if (!in)
        throw std::runtime_error("cannot read " + path.string());
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void writeFile(const std::filesystem::path &path, std::string_view content) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(content.data(), static_cast<std::streamsize>(content.size()));
    if (!out)
        throw std::runtime_error("cannot write " + path.string());
}

LoopbackSocket::LoopbackSocket(bool listen)
    : fd_(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
    if (fd_.get() < 0)
        throwErrno("socket");
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    if (::bind(fd_.get(), reinterpret_cast<sockaddr *>(&addr), sizeof addr) != 0)
        throwErrno("bind 127.0.0.1:0");
    if (listen && ::listen(fd_.get(), 16) != 0)
        throwErrno("listen");
    socklen_t len = sizeof addr;
    if (::getsockname(fd_.get(), reinterpret_cast<sockaddr *>(&addr), &len) != 0)
        throwErrno("getsockname");
    port_ = ntohs(addr.sin_port);
}

const std::filesystem::path &madeFixtures() {
    static const TempDir dir;
    static const bool made = [] {
        std::filesystem::path script = std::filesystem::path("fixtures") / "make_fixtures.sh";
        if (!std::filesystem::exists(script))
            script = std::filesystem::path("tests") / script; // run from the source root
        if (!std::filesystem::exists(script))
            throw std::runtime_error("tests/fixtures/make_fixtures.sh not found from " +
                                     std::filesystem::current_path().string());
        runOk({"sh", std::filesystem::absolute(script).string(), dir.path().string()},
              std::chrono::seconds(300));
        return true;
    }();
    (void)made;
    return dir.path();
}

} // namespace pkirelay::test

// Test helpers for real peers: child processes (OpenSSL's CMP server, the CMC responder, the
// `openssl` command line) started with fork/exec, their stdout read line by line with a
// deadline, and stopped (their whole process group) when the owning object goes out of scope.
// Also a temporary directory and loopback sockets that refuse or never answer. Tests trust the
// programs they start; they never wait by sleeping, only for output or a deadline.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pkirelay::test {

// A file descriptor with one owner.
class Fd {
public:
    Fd() = default;
    explicit Fd(int fd) : fd_(fd) {}
    ~Fd() { reset(); }
    Fd(Fd &&other) noexcept : fd_(other.release()) {}
    Fd &operator=(Fd &&other) noexcept;
    int get() const { return fd_; }
    int release() noexcept;
    void reset() noexcept;

private:
    int fd_ = -1;
};

// A fresh directory under $TMPDIR, removed with its contents on destruction.
class TempDir {
public:
    TempDir();
    ~TempDir();
    TempDir(const TempDir &) = delete;
    TempDir &operator=(const TempDir &) = delete;
    const std::filesystem::path &path() const { return path_; }
    std::string operator/(std::string_view name) const { return (path_ / name).string(); }

private:
    std::filesystem::path path_;
};

struct PeerOptions {
    std::filesystem::path cwd; // empty: inherit
    bool captureStderr = true; // stderr into the same pipe as stdout (for diagnostics)
};

// A running child process. Its stdout is a pipe the test reads; on destruction the child's
// process group gets SIGTERM, then SIGKILL if it has not exited within a second, and is reaped.
class Peer {
public:
    explicit Peer(const std::vector<std::string> &argv, const PeerOptions &options = {});
    ~Peer();
    Peer(const Peer &) = delete;
    Peer &operator=(const Peer &) = delete;

    // The next line of output (without the newline), or nullopt at end of output or when the
    // timeout passes first.
    std::optional<std::string> readLine(std::chrono::milliseconds timeout);
    // Reads lines until one satisfies match and returns it; throws std::runtime_error (with all
    // output read so far) at end of output or when the timeout passes first.
    std::string waitForLine(const std::function<bool(std::string_view)> &match,
                            std::chrono::milliseconds timeout);
    // Everything read so far, for failure messages.
    const std::string &transcript() const { return transcript_; }
    pid_t pid() const { return pid_; }
    // Waits up to timeout for the child to exit; its wait status, or nullopt if still running.
    std::optional<int> wait(std::chrono::milliseconds timeout);
    // Stops the process group now (as the destructor would); returns the wait status.
    int stop();

private:
    pid_t pid_ = -1;
    Fd out_;
    std::string buffer_;     // read but not yet returned as a line
    std::string transcript_; // all lines returned
    bool eof_ = false;
    std::optional<int> status_;
};

struct RunResult {
    int exitCode = -1;  // -1 when killed by a signal
    std::string output; // stdout and stderr together
};

// Runs a command to completion (killed after the timeout, which then throws).
RunResult run(const std::vector<std::string> &argv, std::chrono::milliseconds timeout,
              const PeerOptions &options = {});
// As run(), but throws std::runtime_error with the output unless the exit code is 0.
std::string runOk(const std::vector<std::string> &argv,
                  std::chrono::milliseconds timeout = std::chrono::seconds(30),
                  const PeerOptions &options = {});

// The folder tests/fixtures/make_fixtures.sh filled (run once per process, with the openssl
// command line, from tests/ or the source root); removed when the process exits.
const std::filesystem::path &madeFixtures();

// Whole-file helpers for fixtures.
std::vector<std::uint8_t> readFile(const std::filesystem::path &path);
void writeFile(const std::filesystem::path &path, std::string_view content);

// A TCP socket bound to 127.0.0.1 on a free port. listen() decides what a client sees:
// without it connections are refused; with it the kernel completes the handshake and the
// request is never read, so a client waits for an answer that does not come.
class LoopbackSocket {
public:
    explicit LoopbackSocket(bool listen);
    std::uint16_t port() const { return port_; }
    int fd() const { return fd_.get(); }

private:
    Fd fd_;
    std::uint16_t port_ = 0;
};

} // namespace pkirelay::test

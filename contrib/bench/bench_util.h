// Small pieces the benchmark's own programs (ceiling.cc, answerer.cc) share: an owned file
// descriptor, a fatal error, a whole file read. Header-only, because run.sh builds each program
// from its one source file with g++; nothing here is part of pkirelay.
#pragma once

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>

#include <unistd.h>

namespace bench {

// A file descriptor with an owner (the house rule for every C handle).
struct Fd {
    int fd = -1;
    explicit Fd(int f) : fd(f) {}
    Fd(const Fd &) = delete;
    Fd &operator=(const Fd &) = delete;
    ~Fd() {
        if (fd >= 0)
            ::close(fd);
    }
};

// Ends the program with what failed and errno's text, under the program's name.
[[noreturn]] inline void die(const std::string &what) {
    std::fprintf(stderr, "%s: %s: %s\n", ::program_invocation_short_name, what.c_str(),
                 std::strerror(errno));
    std::exit(1);
}

inline std::string slurp(const std::string &path) {
    std::ifstream in(path, std::ios::binary);
    if (!in)
        die("read " + path);
    return {std::istreambuf_iterator<char>(in), {}};
}

} // namespace bench

// File system access for sources and response writers, done relative to an open directory so
// that nothing a message or a watched folder contains can redirect it: files are opened with
// O_NOFOLLOW (symlinks in watched folders are never followed), read with a size bound, and
// written via a temporary name, fsync, rename and one fsync of the folder per batch
// (../shared/DESIGN.md, "Security" and "Data flow": batches, because one fsync costs ~0.3 ms).
// std::filesystem and Boost.Filesystem expose neither openat nor fsync, hence POSIX here.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <sys/types.h>
#include <utility>
#include <vector>

#include "bytes.h"

namespace pkirelay {

// A failed system call, with the errno text and the path involved.
class IoError : public std::runtime_error {
public:
    IoError(const std::string &what, int err);
    int error() const { return error_; }

private:
    int error_;
};

class Fd {
public:
    Fd() = default;
    explicit Fd(int fd) : fd_(fd) {}
    Fd(Fd &&other) noexcept : fd_(other.release()) {}
    Fd &operator=(Fd &&other) noexcept;
    Fd(const Fd &) = delete;
    Fd &operator=(const Fd &) = delete;
    ~Fd();
    int get() const { return fd_; }
    int release() { return std::exchange(fd_, -1); }

private:
    int fd_ = -1;
};

struct DirEntry {
    enum class Type { Regular, Symlink, Directory, Other } type;
    std::string name;
};

// Which file a name referred to when it was read: acknowledging (deleting or moving) a name is
// only right while it still refers to the same, unchanged file.
struct FileIdentity {
    std::uint64_t device = 0;
    std::uint64_t inode = 0;
    std::uint64_t size = 0;
    std::int64_t mtimeNs = 0;
    bool operator==(const FileIdentity &) const = default;
};

struct FileRead {
    Bytes bytes;              // empty when tooLarge
    std::uint64_t size = 0;   // as fstat saw it
    bool tooLarge = false;    // size > the bound: nothing was read
    std::int64_t mtimeMs = 0; // modification time, Unix milliseconds
    FileIdentity identity;    // as fstat saw it after the read
};
class Directory {
public:
    // Opens a folder (the configured path itself is trusted; what is inside it is not). The
    // last component must not be a symlink: a watched folder is refused the same way as the
    // folders pkirelay writes into.
    static Directory open(const std::string &path);
    // Opens it, creating it (mode 0700) first when it is missing. The last component must not
    // be a symlink: folders such as <watched>/processed live where a hostile writer could plant
    // one (the configuration allows such folders only as direct children of a watched folder).
    static Directory openOrCreate(const std::string &path);

    const std::string &path() const { return path_; }
    int fd() const { return fd_.get(); }

    // Every entry but "." and "..", sorted by name (so batches are reproducible).
    std::vector<DirEntry> list() const;
    // Reads a regular file, refusing symlinks and anything that is not a regular file.
    FileRead read(const std::string &name, std::uint64_t maxSize) const;
    bool exists(const std::string &name) const;
    // What name is (not following a symlink), or nullopt when it is gone.
    std::optional<DirEntry::Type> typeOf(const std::string &name) const;
    // The identity of name now (not following a symlink), or nullopt when it is gone.
    std::optional<FileIdentity> identity(const std::string &name) const;
    void unlink(const std::string &name) const;
    // Moves name into another folder without replacing anything there (RENAME_NOREPLACE).
    // Returns false when target already exists.
    bool moveTo(const std::string &name, const Directory &target, const std::string &newName) const;
    void sync() const;

private:
    Directory(std::string path, Fd fd) : path_(std::move(path)), fd_(std::move(fd)) {}
    std::string path_;
    Fd fd_;
};

// Reads a file named by the operator (e.g. `pkirelay inspect FILE`), bounded like
// Directory::read; unlike it, a symlink given on purpose is followed.
FileRead readFile(const std::string &path, std::uint64_t maxSize);

struct FileToWrite {
    const Directory *dir = nullptr;
    std::string name;
    ByteView bytes;
    std::string tempTag; // makes the temporary name unique to this writer (e.g. a delivery id)
};

// What ends the temporary names of writeFilesDurably.
constexpr std::string_view temporarySuffix = ".pkirelay-tmp";

// The error text writeFilesDurably gives for a name that is already taken.
constexpr std::string_view nameTakenError = "a file of that name appeared meanwhile";

// Writes a batch durably: each file to ".<name>.<tempTag>.pkirelay-tmp", fsync each (the syncs
// issued together from a few threads, after every file is written), rename each over its name, then
// fsync each distinct folder once. A crash leaves either the old state or the new file, never a
// partial one under the final name. Temporary names start with '.', which every scan skips. A file
// never replaces one that is there already (RENAME_NOREPLACE): what is there may be someone's
// request. Files succeed or fail one by one: the result has, per file, an empty string or the error
// (nameTakenError for a taken name); a failed file leaves no temporary file behind.
std::vector<std::string> writeFilesDurably(std::span<const FileToWrite> files, mode_t mode);

// Longest file name pkirelay writes, leaving room for the temporary affixes within NAME_MAX.
constexpr std::size_t maxOutputName = 200;

} // namespace pkirelay

// POSIX implementation of file_io.h. Every path below a Directory is opened with *at() calls.
#include "file_io.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <map>
#include <stdio.h>
#include <sys/stat.h>
#include <thread>
#include <unistd.h>

#include <fmt/format.h>

#include "crash_point.h"
#include "owned.h"

namespace pkirelay {

IoError::IoError(const std::string &what, int err)
    : std::runtime_error(fmt::format("{}: {}", what, std::strerror(err))), error_(err) {}

Fd &Fd::operator=(Fd &&other) noexcept {
    if (this != &other) {
        if (fd_ >= 0)
            ::close(fd_);
        fd_ = other.release();
    }
    return *this;
}

Fd::~Fd() {
    if (fd_ >= 0)
        ::close(fd_);
}

namespace {

void writeAll(int fd, ByteView bytes, const std::string &what) {
    std::size_t done = 0;
    while (done < bytes.size()) {
        const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            throw IoError("write " + what, errno);
        }
        done += static_cast<std::size_t>(n);
    }
}

} // namespace

Directory Directory::open(const std::string &path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        const int err = errno;
        struct stat st {};
        if (::lstat(path.c_str(), &st) == 0 && S_ISLNK(st.st_mode))
            throw IoError("open folder " + path + " (a symlink, not followed)", err);
        throw IoError("open folder " + path, err);
    }
    return Directory(path, Fd(fd));
}

Directory Directory::openOrCreate(const std::string &path) {
    if (::mkdir(path.c_str(), 0700) != 0 && errno != EEXIST)
        throw IoError("create folder " + path, errno);
    return open(path);
}

namespace {

FileIdentity identityOf(const struct stat &st) {
    return {static_cast<std::uint64_t>(st.st_dev), static_cast<std::uint64_t>(st.st_ino),
            static_cast<std::uint64_t>(st.st_size),
            static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec};
}

} // namespace

std::vector<DirEntry> Directory::list() const {
    // fdopendir takes ownership of its descriptor, so give it a duplicate.
    const int dup = ::openat(fd(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dup < 0)
        throw IoError("list " + path_, errno);
    Owned<DIR, ::closedir> dir(::fdopendir(dup));
    if (!dir) {
        const int err = errno;
        ::close(dup);
        throw IoError("list " + path_, err);
    }
    std::vector<DirEntry> entries;
    errno = 0;
    while (const dirent *e = ::readdir(dir.get())) {
        const std::string name = e->d_name;
        if (name == "." || name == "..")
            continue;
        DirEntry::Type type = DirEntry::Type::Other;
        unsigned char dtype = e->d_type;
        if (dtype == DT_UNKNOWN) {
            struct stat st {};
            if (::fstatat(fd(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0)
                continue; // vanished meanwhile
            dtype = S_ISREG(st.st_mode)   ? DT_REG
                    : S_ISLNK(st.st_mode) ? DT_LNK
                    : S_ISDIR(st.st_mode) ? DT_DIR
                                          : DT_UNKNOWN;
        }
        if (dtype == DT_REG)
            type = DirEntry::Type::Regular;
        else if (dtype == DT_LNK)
            type = DirEntry::Type::Symlink;
        else if (dtype == DT_DIR)
            type = DirEntry::Type::Directory;
        entries.push_back({type, name});
    }
    if (errno != 0)
        throw IoError("list " + path_, errno);
    std::sort(entries.begin(), entries.end(),
              [](const DirEntry &a, const DirEntry &b) { return a.name < b.name; });
    return entries;
}

namespace {

// Reads an open file to its end, bounded by maxSize: what Directory::read and readFile share.
FileRead readOpened(const Fd &fd, const std::string &what, std::uint64_t maxSize) {
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0)
        throw IoError("stat " + what, errno);
    if (S_ISDIR(st.st_mode))
        throw IoError("read " + what, EISDIR);
    if (!S_ISREG(st.st_mode))
        throw IoError("read " + what + " (not a regular file)", EINVAL);
    FileRead result;
    result.size = static_cast<std::uint64_t>(st.st_size);
    result.mtimeMs =
        static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000 + st.st_mtim.tv_nsec / 1000000;
    if (result.size > maxSize) {
        result.tooLarge = true;
        result.identity = identityOf(st);
        return result;
    }
    // Read to end of file, bounded: the file may grow while we read (a slow copy).
    result.bytes.resize(static_cast<std::size_t>(result.size) + 1);
    std::size_t done = 0;
    for (;;) {
        if (done == result.bytes.size()) {
            if (result.bytes.size() > maxSize) {
                result.tooLarge = true;
                result.bytes.clear();
                result.size = done;
                return result;
            }
            result.bytes.resize(std::min<std::size_t>(result.bytes.size() * 2, maxSize + 1));
        }
        const ssize_t n = ::read(fd.get(), result.bytes.data() + done, result.bytes.size() - done);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            throw IoError("read " + what, errno);
        }
        if (n == 0)
            break;
        done += static_cast<std::size_t>(n);
    }
    result.bytes.resize(done);
    result.size = done;
    // The identity after the read, so that a file still growing meanwhile does not match.
    if (::fstat(fd.get(), &st) != 0)
        throw IoError("stat " + what, errno);
    result.identity = identityOf(st);
    return result;
}

} // namespace

FileRead Directory::read(const std::string &name, std::uint64_t maxSize) const {
    const std::string what = path_ + "/" + name;
    // O_NOFOLLOW: a symlink planted in a watched folder must not make us read elsewhere;
    // O_NONBLOCK: a FIFO must not hang the scan (it is refused as not a regular file).
    Fd fd(::openat(fd_.get(), name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
    if (fd.get() < 0)
        throw IoError("open " + what, errno);
    return readOpened(fd, what, maxSize);
}

FileRead readFile(const std::string &path, std::uint64_t maxSize) {
    Fd fd(::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
    if (fd.get() < 0)
        throw IoError("open " + path, errno);
    return readOpened(fd, path, maxSize);
}

std::optional<FileIdentity> Directory::identity(const std::string &name) const {
    struct stat st {};
    if (::fstatat(fd(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0)
        return std::nullopt;
    return identityOf(st);
}

std::optional<DirEntry::Type> Directory::typeOf(const std::string &name) const {
    struct stat st {};
    if (::fstatat(fd(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0)
        return std::nullopt;
    return S_ISREG(st.st_mode)   ? DirEntry::Type::Regular
           : S_ISLNK(st.st_mode) ? DirEntry::Type::Symlink
           : S_ISDIR(st.st_mode) ? DirEntry::Type::Directory
                                 : DirEntry::Type::Other;
}

bool Directory::exists(const std::string &name) const {
    struct stat st {};
    return ::fstatat(fd(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0;
}

void Directory::unlink(const std::string &name) const {
    if (::unlinkat(fd(), name.c_str(), 0) != 0 && errno != ENOENT)
        throw IoError("delete " + path_ + "/" + name, errno);
}

bool Directory::moveTo(const std::string &name, const Directory &target,
                       const std::string &newName) const {
    if (::renameat2(fd(), name.c_str(), target.fd(), newName.c_str(), RENAME_NOREPLACE) == 0)
        return true;
    if (errno == EEXIST)
        return false;
    throw IoError("move " + path_ + "/" + name + " to " + target.path() + "/" + newName, errno);
}

void Directory::sync() const {
    if (::fsync(fd()) != 0)
        throw IoError("sync folder " + path_, errno);
}

namespace {

// fsyncs every descriptor whose error is still empty, several at once, and returns each one's
// errno (0: synced). One after the other, each fsync waits for its own journal commit and
// cache flush: about 3.5 ms apiece on the benchmark's ext4 disk, 230 ms for 64 response files.
// Issued from several threads at once, they meet in the file system's running transaction and
// share its commit (ext4's jbd2 and XFS's log both group concurrent syncs): 18 to 28 ms for the
// same 64. The threads only call fsync on descriptors this call owns and are joined before it
// returns, so the rest of the program stays single-threaded. A syncfs would do it in one call,
// but it also syncs every other program's dirty data on that file system.
void syncTogether(std::span<const Fd> fds, std::span<const std::string> skip,
                  std::span<int> result) {
    std::vector<std::size_t> todo;
    for (std::size_t i = 0; i < fds.size(); ++i)
        if (skip[i].empty())
            todo.push_back(i);
    auto syncOne = [&](std::size_t i) {
        result[i] = ::fsync(fds[i].get()) == 0 ? 0 : errno;
    };
    constexpr std::size_t maxThreads = 16;
    const std::size_t threads = std::min(maxThreads, todo.size());
    if (threads <= 1) {
        for (auto i : todo)
            syncOne(i);
        return;
    }
    std::vector<std::thread> pool;
    pool.reserve(threads - 1);
    auto slice = [&](std::size_t t) {
        for (std::size_t k = t; k < todo.size(); k += threads)
            syncOne(todo[k]);
    };
    try {
        for (std::size_t t = 1; t < threads; ++t)
            pool.emplace_back(slice, t);
    } catch (const std::system_error &) {
        // No thread to be had: the ones started and this one share what is left.
    }
    const std::size_t started = pool.size() + 1;
    for (std::size_t k = 0; k < todo.size(); ++k)
        if (k % threads == 0 || k % threads >= started)
            syncOne(todo[k]);
    for (auto &t : pool)
        t.join();
}

} // namespace

std::vector<std::string> writeFilesDurably(std::span<const FileToWrite> files, mode_t mode) {
    std::vector<std::string> errors(files.size());
    std::vector<std::string> temps(files.size());
    // The files' syncs are issued together: every file is written and its writeback started
    // (sync_file_range), and only then are they fsynced, several at once (syncTogether), so
    // that the file system commits them in one journal transaction. (A syncfs of the file
    // system would sync every other program's dirty data as well: on a busy disk that is
    // slower, not faster.)
    std::vector<Fd> fds(files.size());
    for (std::size_t i = 0; i < files.size(); ++i) {
        const auto &file = files[i];
        // Unique per writer (tag), so that two deliveries can never share a temporary file.
        temps[i] =
            "." + file.name + (file.tempTag.empty() ? "" : "." + file.tempTag) + ".pkirelay-tmp";
        const std::string what = file.dir->path() + "/" + temps[i];
        try {
            Fd fd(::openat(file.dir->fd(), temps[i].c_str(),
                           O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, mode));
            if (fd.get() < 0)
                throw IoError("create " + what, errno);
            // O_CREAT's mode passes through the umask; the mode we promise must not depend on it.
            if (::fchmod(fd.get(), mode) != 0)
                throw IoError("chmod " + what, errno);
            writeAll(fd.get(), file.bytes, what);
            // Only a start: the fsync below is what makes the file durable.
            ::sync_file_range(fd.get(), 0, 0, SYNC_FILE_RANGE_WRITE);
            fds[i] = std::move(fd);
        } catch (const IoError &e) {
            errors[i] = e.what();
            ::unlinkat(file.dir->fd(), temps[i].c_str(), 0);
        }
    }
    std::vector<int> syncErrors(files.size(), 0);
    syncTogether(fds, errors, syncErrors);
    for (std::size_t i = 0; i < files.size(); ++i) {
        if (!errors[i].empty())
            continue;
        if (syncErrors[i] != 0) {
            errors[i] =
                IoError("sync " + files[i].dir->path() + "/" + temps[i], syncErrors[i]).what();
            ::unlinkat(files[i].dir->fd(), temps[i].c_str(), 0);
        }
        fds[i] = Fd();
    }
    crashPoint("temporary"); // temporary files written and synced, none renamed
    std::map<const Directory *, std::vector<std::size_t>> renamed;
    for (std::size_t i = 0; i < files.size(); ++i) {
        if (!errors[i].empty())
            continue;
        const auto &file = files[i];
        if (::renameat2(file.dir->fd(), temps[i].c_str(), file.dir->fd(), file.name.c_str(),
                        RENAME_NOREPLACE) != 0) {
            errors[i] = errno == EEXIST
                            ? std::string(nameTakenError)
                            : IoError("rename " + file.dir->path() + "/" + temps[i], errno).what();
            ::unlinkat(file.dir->fd(), temps[i].c_str(), 0);
            continue;
        }
        renamed[file.dir].push_back(i);
    }
    crashPoint("renamed"); // renamed, the folders not yet synced
    // Until its folder is synced a renamed file may vanish in a power loss: a folder that
    // cannot be synced fails every file renamed into it (writing them again is harmless).
    for (const auto &[dir, indexes] : renamed) {
        try {
            dir->sync();
        } catch (const IoError &e) {
            for (std::size_t i : indexes)
                errors[i] = e.what();
        }
    }
    return errors;
}

} // namespace pkirelay

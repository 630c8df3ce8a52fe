// The SQLite wrapper's implementation. Each C call is checked; a failure is a StoreError with the
// message and extended code, so the log says "database is locked (SQLITE_BUSY, 5)" rather than
// a bare number.
#include "spool/sqlite.h"

#include <exception>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <thread>

#include <fmt/format.h>

namespace pkirelay::spool::sql {

void fail(sqlite3 *db, std::string_view what) {
    const int code = db ? ::sqlite3_extended_errcode(db) : SQLITE_ERROR;
    const char *msg = db ? ::sqlite3_errmsg(db) : ::sqlite3_errstr(code);
    // CANTOPEN shows up at open, or at the first read when the -wal or -shm file cannot be
    // created; PowerDNS gives the same hint.
    const std::string_view hint =
        (code & 0xff) == SQLITE_CANTOPEN
            ? "; the database's directory must exist and be writable, because WAL mode keeps "
              "-wal and -shm files beside the database"
            : "";
    std::string text =
        fmt::format("{}: {} ({}, {}){}", what, msg, ::sqlite3_errstr(code), code, hint);
    if (isCorruption(code))
        throw StoreCorrupt(std::move(text));
    const int primary = code & 0xff;
    if (primary == SQLITE_BUSY || primary == SQLITE_LOCKED || primary == SQLITE_FULL)
        throw StoreBusy(std::move(text));
    throw StoreError(std::move(text));
}

bool isCorruption(int code) {
    const int primary = code & 0xff;
    return primary == SQLITE_CORRUPT || primary == SQLITE_NOTADB;
}

namespace {

void check(sqlite3 *db, int rc, std::string_view what) {
    if (rc != SQLITE_OK)
        fail(db, what);
}

} // namespace

// --- Statement ---------------------------------------------------------------------------

Statement::Statement(sqlite3 *db, std::string_view sql) : db_(db) {
    sqlite3_stmt *raw = nullptr;
    const int rc =
        ::sqlite3_prepare_v2(db, sql.data(), static_cast<int>(sql.size()), &raw, nullptr);
    stmt_.reset(raw);
    if (rc != SQLITE_OK)
        fail(db, fmt::format("cannot prepare \"{}\"", sql));
}

Statement &Statement::bind(int index, std::int64_t value) {
    check(db_, ::sqlite3_bind_int64(stmt_.get(), index, value), "bind");
    return *this;
}

Statement &Statement::bind(int index, std::string_view text) {
    // SQLITE_TRANSIENT: SQLite copies, so the caller's buffer need not outlive the step.
    check(db_,
          ::sqlite3_bind_text64(stmt_.get(), index, text.data(), text.size(), SQLITE_TRANSIENT,
                                SQLITE_UTF8),
          "bind");
    return *this;
}

Statement &Statement::bindBlob(int index, ByteView blob) {
    // A zero-length blob with a null pointer would bind NULL; bind an empty blob explicitly.
    static const std::uint8_t empty = 0;
    const void *data = blob.empty() ? &empty : blob.data();
    check(db_, ::sqlite3_bind_blob64(stmt_.get(), index, data, blob.size(), SQLITE_TRANSIENT),
          "bind");
    return *this;
}

Statement &Statement::bindNull(int index) {
    check(db_, ::sqlite3_bind_null(stmt_.get(), index), "bind");
    return *this;
}

Statement &Statement::bindBlobOrNull(int index, ByteView blob) {
    return blob.empty() ? bindNull(index) : bindBlob(index, blob);
}

Statement &Statement::bindTextOrNull(int index, std::string_view text) {
    return text.empty() ? bindNull(index) : bind(index, text);
}

bool Statement::step() {
    const int rc = ::sqlite3_step(stmt_.get());
    if (rc == SQLITE_ROW)
        return true;
    if (rc == SQLITE_DONE)
        return false;
    fail(db_, fmt::format("cannot run \"{}\"", ::sqlite3_sql(stmt_.get())));
}

void Statement::run() {
    while (step()) {
    }
}

void Statement::reset() noexcept {
    // The return value repeats the last step's error, which step() has already reported.
    ::sqlite3_reset(stmt_.get());
}

void Statement::clearBindings() noexcept {
    ::sqlite3_clear_bindings(stmt_.get());
}

bool Statement::isNull(int column) {
    return ::sqlite3_column_type(stmt_.get(), column) == SQLITE_NULL;
}

std::int64_t Statement::int64(int column) {
    return ::sqlite3_column_int64(stmt_.get(), column);
}

std::optional<std::int64_t> Statement::optInt64(int column) {
    if (isNull(column))
        return std::nullopt;
    return int64(column);
}

std::string Statement::text(int column) {
    // column_text before column_bytes: the pointer is valid for the length that follows.
    const auto *p = ::sqlite3_column_text(stmt_.get(), column);
    const int n = ::sqlite3_column_bytes(stmt_.get(), column);
    if (!p)
        return {};
    return std::string(reinterpret_cast<const char *>(p), static_cast<std::size_t>(n));
}

Bytes Statement::blob(int column) {
    // column_blob before column_bytes (LIBRARIES.md, SQLite 6).
    const auto *p = static_cast<const std::uint8_t *>(::sqlite3_column_blob(stmt_.get(), column));
    const int n = ::sqlite3_column_bytes(stmt_.get(), column);
    if (!p)
        return {};
    return Bytes(p, p + n);
}

Query::Query(Statement &statement) : statement_(&statement) {
    // Every Query resets its statement when it ends, and a new statement starts reset: only
    // the bindings of the last use remain to be cleared.
    statement_->clearBindings();
}

// --- Database ----------------------------------------------------------------------------

namespace {

// RFC 3986 §3.3 percent-encoding for the path of a file: URI (SQLite's uri.html).
std::string uriPath(std::string_view path) {
    std::string out;
    for (unsigned char c : path) {
        if (std::isalnum(c) || c == '/' || c == '-' || c == '_' || c == '.' || c == '~')
            out.push_back(static_cast<char>(c));
        else
            out += fmt::format("%{:02X}", c);
    }
    return out;
}

// Once per process, before the first connection: no memory statistics. With them (the
// default) every allocation SQLite makes takes a global mutex to count it; nothing here reads
// the counts (sqlite3_memory_used, soft heap limits). sqlite3_config fails harmlessly
// (SQLITE_MISUSE) if the library was initialised already, e.g. by another user of it.
void configureLibrary() {
    static const bool done = [] {
        ::sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
        return true;
    }();
    (void)done;
}

} // namespace

// SQLite reads a WAL database read-only when its -shm and -wal files exist or can be created
// (wal.html, "Read-Only Databases"). In a folder the reader cannot write, with no -wal there,
// the first read fails with SQLITE_READONLY_DIRECTORY (or CANTOPEN). No -wal file means no
// connection has the database open for writing (a writer creates it, in this same folder, and
// the last one to close removes it), so the file is read as immutable: what it holds is all
// there is. A writer that starts during the read could make this one view inconsistent, never
// the store.
Database Database::readOnlyFallback(Database db, const std::string &path, int busyTimeoutMs) {
    const int rc =
        ::sqlite3_exec(db.get(), "SELECT count(*) FROM sqlite_master", nullptr, nullptr, nullptr);
    const int code = ::sqlite3_extended_errcode(db.get());
    const bool folderReadOnly =
        rc != SQLITE_OK && (code == SQLITE_READONLY_DIRECTORY || (code & 0xff) == SQLITE_CANTOPEN);
    struct ::stat st {};
    if (!folderReadOnly || ::stat((path + "-wal").c_str(), &st) == 0)
        return db; // fine, or another failure that the caller's first statement reports
    sqlite3 *raw = nullptr;
    const std::string uri = "file:" + uriPath(path) + "?immutable=1";
    const int rc2 =
        ::sqlite3_open_v2(uri.c_str(), &raw, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, nullptr);
    DatabaseHandle handle(raw);
    if (rc2 != SQLITE_OK)
        fail(raw, fmt::format("cannot open database {} read-only", path));
    ::sqlite3_extended_result_codes(raw, 1);
    check(raw, ::sqlite3_busy_timeout(raw, busyTimeoutMs), "busy_timeout");
    Database immutable(std::move(handle));
    immutable.exec("PRAGMA foreign_keys = ON");
    return immutable;
}

Database Database::open(const std::string &path, int busyTimeoutMs) {
    return open(path, Access::Create, busyTimeoutMs);
}

Database Database::open(const std::string &path, Access access, int busyTimeoutMs) {
    // Create the file ourselves so that it is private from the first byte: SQLite would create
    // it with 0644 minus umask, and gives the -wal and -shm files the database file's mode.
    if (access == Access::Create && path != ":memory:" && !path.empty()) {
        const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd >= 0)
            ::close(fd); // only created here; SQLite opens it itself just below
    }

    const int flags = (access == Access::ReadOnly   ? SQLITE_OPEN_READONLY
                       : access == Access::NoCreate ? SQLITE_OPEN_READWRITE
                                                    : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE) |
                      SQLITE_OPEN_NOMUTEX;
    configureLibrary();
    sqlite3 *raw = nullptr;
    const int rc = ::sqlite3_open_v2(path.c_str(), &raw, flags, nullptr);
    // sqlite3_open_v2 returns a handle even on failure; own it before anything can throw.
    DatabaseHandle handle(raw);
    if (rc != SQLITE_OK)
        fail(raw, fmt::format("cannot open database {}", path));

    // SQLITE_OPEN_NOMUTEX: a connection is only ever used by the thread that opened it (the
    // event loop's), so SQLite's per-connection mutex, taken and released in every API call
    // (about 600 times per relayed message), guards nothing (threadsafe.html, multi-thread).
    ::sqlite3_extended_result_codes(raw, 1);
    check(raw, ::sqlite3_busy_timeout(raw, busyTimeoutMs), "busy_timeout");

    Database db(std::move(handle));
    // foreign_keys is off by default and per connection; journal_mode must be set outside a
    // transaction; synchronous=FULL explicitly, because we acknowledge sources after commit and
    // NORMAL may lose the last commits on power loss (LIBRARIES.md, SQLite 2).
    db.exec("PRAGMA foreign_keys = ON");
    // A reader changes nothing: the journal mode is the writer's (a WAL database stays WAL).
    if (access == Access::ReadOnly)
        return readOnlyFallback(std::move(db), path, busyTimeoutMs);
    const std::string mode = db.switchToWal(busyTimeoutMs);
    if (mode != "wal" && path != ":memory:")
        throw StoreError(fmt::format(
            "database {}: journal_mode is {}, not wal (WAL does not work on network file systems)",
            path, mode));
    db.exec("PRAGMA synchronous = FULL");
    // Sized for a pass's working set: the index and table pages of the items in flight and of
    // the newest rows. With SQLite's default (2 MB) a backlog of a few thousand items no longer
    // fits, and every statement read its pages again (24 reads per message). The page cache
    // grows only as pages are used, up to 32 MB. No memory map: the integrity check at open
    // reads every page, and through a map each page read would stay in the process's resident
    // memory (315 MB with 500,000 finished items), where the page cache stays bounded.
    db.exec("PRAGMA cache_size = -32768");
    // A checkpoint copies the log into the database and syncs both: every 16 MB of log rather
    // than every 4 MB (the default), so a page changed by many transactions of a pass is
    // copied once. It does not change what is durable: a commit is synced in the log.
    db.exec("PRAGMA wal_autocheckpoint = 4096");
    return db;
}

std::string Database::switchToWal(int busyTimeoutMs) {
    // Leaving rollback mode needs an exclusive lock. When two connections open a new database
    // together, SQLite returns SQLITE_BUSY at once rather than wait in the busy handler (waiting
    // could deadlock two lock upgrades), as the concurrent-open test showed. Outside a
    // transaction a retry is safe.
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::milliseconds(busyTimeoutMs);
    for (;;) {
        Statement st(db_.get(), "PRAGMA journal_mode = WAL");
        const int rc = ::sqlite3_step(st.handle());
        if (rc == SQLITE_ROW)
            return st.text(0);
        if ((rc & 0xff) != SQLITE_BUSY || std::chrono::steady_clock::now() >= deadline)
            fail(db_.get(), "cannot switch to WAL mode");
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
}

void Database::exec(std::string_view sql) {
    const std::string owned(sql); // sqlite3_exec wants a terminated string
    char *err = nullptr;
    const int rc = ::sqlite3_exec(db_.get(), owned.c_str(), nullptr, nullptr, &err);
    Owned<char, ::sqlite3_free> errOwned(err);
    if (rc != SQLITE_OK)
        fail(db_.get(), "cannot execute SQL");
}

Query Database::query(std::string_view sql) {
    // The SQL texts are literals almost everywhere, at the same address every time: found by
    // address first, and by text (comparing long common prefixes of some sixty statements, about
    // 600 instructions a lookup) only when that misses. The text is compared on a hit too,
    // since a temporary string may reuse an address.
    auto &slot = byAddress_[sql.data()];
    if (slot != nullptr && std::string_view(slot->first) == sql)
        return Query(*slot->second);
    auto it = cache_.find(sql);
    if (it == cache_.end())
        it = cache_.emplace(std::string(sql), std::make_unique<Statement>(db_.get(), sql)).first;
    slot = &*it;
    return Query(*it->second);
}

void Database::step(std::string_view sql) {
    auto q = query(sql);
    q->run();
}

std::int64_t Database::queryInt(std::string_view sql) {
    Statement st(db_.get(), sql);
    if (!st.step())
        throw StoreError(fmt::format("\"{}\" returned no row", sql));
    return st.int64(0);
}

std::string Database::queryText(std::string_view sql) {
    Statement st(db_.get(), sql);
    if (!st.step())
        throw StoreError(fmt::format("\"{}\" returned no row", sql));
    return st.text(0);
}

// --- Transaction -------------------------------------------------------------------------

Transaction::Transaction(Database &db, Mode mode)
    : db_(db), joined_(!::sqlite3_get_autocommit(db.get())),
      exceptions_(std::uncaught_exceptions()) {
    if (!joined_)
        db_.step(mode == Mode::Immediate ? "BEGIN IMMEDIATE" : "BEGIN DEFERRED");
}

Transaction::~Transaction() {
    // A joined transaction that ends without an exception leaves the outer one to commit.
    if (done_ || (joined_ && std::uncaught_exceptions() <= exceptions_))
        return;
    // Only when a transaction is still open: a failed COMMIT may already have ended it.
    if (!::sqlite3_get_autocommit(db_.get()))
        ::sqlite3_exec(db_.get(), "ROLLBACK", nullptr, nullptr, nullptr);
}

void Transaction::commit() {
    if (!joined_)
        db_.step("COMMIT");
    done_ = true;
}

} // namespace pkirelay::spool::sql

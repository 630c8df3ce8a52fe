// A small RAII layer over the SQLite C API, on the model of Botan's and PowerDNS's wrappers:
// every sqlite3* and sqlite3_stmt* is owned, every failure becomes a StoreError carrying
// sqlite3_errmsg and the extended result code, and every write transaction is BEGIN IMMEDIATE
// (../shared/LIBRARIES.md, "SQLite"). It trusts only SQLite itself; the SQL it is given comes
// from our own code, never from input.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

#include <sqlite3.h>

#include "lib/bytes.h"
#include "lib/owned.h"
#include "spool/store.h"

namespace pkirelay::spool::sql {

using DatabaseHandle = Owned<sqlite3, ::sqlite3_close_v2>;
using StatementHandle = Owned<sqlite3_stmt, ::sqlite3_finalize>;

// One prepared statement. Parameters are 1-based, columns 0-based, as in the C API.
class Statement {
public:
    Statement(sqlite3 *db, std::string_view sql);

    Statement &bind(int index, std::int64_t value);
    Statement &bind(int index, std::string_view text);
    Statement &bind(int index, const char *text) { return bind(index, std::string_view(text)); }
    Statement &bindBlob(int index, ByteView blob); // a blob, even when empty
    Statement &bindNull(int index);
    // Empty bytes or an empty optional bind NULL: "absent" in the correlation columns.
    Statement &bindBlobOrNull(int index, ByteView blob);
    Statement &bindTextOrNull(int index, std::string_view text);
    template <class T> Statement &bind(int index, const std::optional<T> &value) {
        return value ? bind(index, *value) : bindNull(index);
    }

    // True when a row is available; false when the statement is done.
    bool step();
    // Steps a statement that returns no rows (or whose rows do not matter).
    void run();
    // Makes the statement reusable and releases its read snapshot (a statement left mid-way
    // would hold the WAL back from checkpointing).
    void reset() noexcept;
    void clearBindings() noexcept;

    sqlite3_stmt *handle() const { return stmt_.get(); }

    bool isNull(int column);
    std::int64_t int64(int column);
    std::optional<std::int64_t> optInt64(int column);
    std::string text(int column);
    Bytes blob(int column);

private:
    sqlite3 *db_; // borrowed from the Database, which outlives its statements
    StatementHandle stmt_;
};

// A use of a cached statement: bindings cleared at the start, the statement reset at the end,
// so a scope that throws never leaves a statement running.
class Query {
public:
    explicit Query(Statement &statement);
    ~Query() { statement_->reset(); }
    Query(const Query &) = delete;
    Query &operator=(const Query &) = delete;
    Statement *operator->() { return statement_; }
    Statement &operator*() { return *statement_; }

private:
    Statement *statement_;
};

class Database {
public:
    enum class Access {
        Create,   // read-write, the file created (mode 0600) when missing
        NoCreate, // read-write, the file must exist
        ReadOnly, // SQLITE_OPEN_READONLY: never writes, never changes the journal mode
    };
    // Opens (creating it when missing) and configures one connection: extended result codes,
    // busy timeout, foreign_keys=ON, journal_mode=WAL, synchronous=FULL.
    static Database open(const std::string &path, int busyTimeoutMs = 5000);
    // The same with a choice of access; ReadOnly sets only the busy timeout and foreign_keys.
    static Database open(const std::string &path, Access access, int busyTimeoutMs = 5000);

    Database(Database &&) noexcept = default;
    Database &operator=(Database &&) noexcept = default;

    // Runs one or more statements that return nothing of interest (migrations, pragmas).
    void exec(std::string_view sql);
    // The connection's cached prepared statement for this SQL text.
    Query query(std::string_view sql);
    // Runs one statement through the cache (BEGIN, COMMIT: prepared once, not parsed at every
    // transaction as exec() would).
    void step(std::string_view sql);
    // One value from a query such as "PRAGMA user_version".
    std::int64_t queryInt(std::string_view sql);
    std::string queryText(std::string_view sql);

    sqlite3 *get() const { return db_.get(); }

private:
    explicit Database(DatabaseHandle db) : db_(std::move(db)) {}
    static Database readOnlyFallback(Database db, const std::string &path, int busyTimeoutMs);
    std::string switchToWal(int busyTimeoutMs);
    DatabaseHandle db_;
    // Declared after db_, so statements are finalised before the connection is closed.
    using Cache = std::map<std::string, std::unique_ptr<Statement>, std::less<>>;
    Cache cache_;
    // The same entries by the address their text was last given at (query()).
    std::unordered_map<const char *, const Cache::value_type *> byAddress_;
};

// BEGIN IMMEDIATE now, ROLLBACK on destruction unless commit() was called. IMMEDIATE takes the
// write lock up front, so busy_timeout can wait for it; a DEFERRED transaction that reads and
// then writes would fail at once under WAL with SQLITE_BUSY_SNAPSHOT. Deferred is only for
// several reads that must see one snapshot (show), never for writing.
//
// A Transaction begun while the connection is already in one joins it: it begins and commits
// nothing itself, so that a caller can group several store calls into one transaction (one
// fsync). A joined Transaction destroyed by an exception rolls the whole transaction back.
class Transaction {
public:
    enum class Mode { Immediate, ReadOnly };
    explicit Transaction(Database &db, Mode mode = Mode::Immediate);
    ~Transaction();
    Transaction(const Transaction &) = delete;
    Transaction &operator=(const Transaction &) = delete;
    void commit();

private:
    Database &db_;
    bool done_ = false;
    bool joined_ = false;
    int exceptions_ = 0; // std::uncaught_exceptions() when it began
};

// A StoreError from the connection's last error: "<what>: <errmsg> (<code name>, <code>)".
// SQLITE_CORRUPT and SQLITE_NOTADB (and their extended codes) throw StoreCorrupt: a damaged
// file does not heal with time, so it must not read as "busy, try later".
[[noreturn]] void fail(sqlite3 *db, std::string_view what);

// True for the primary result codes that mean the file is damaged or not a database.
bool isCorruption(int code);

} // namespace pkirelay::spool::sql

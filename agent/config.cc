// Configuration parsing with toml++ (Debian libtomlplusplus-dev). The key tables below are the
// single description of every setting: the parser, the bounds checks and `check-config --keys`
// all read them. Unknown keys are errors, because a misspelt key silently ignored is a setting
// the operator believes in and does not have.
#include "config.h"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <variant>

#include <cerrno>
#include <cstring>
#include <optional>
#include <sys/stat.h>

#include <fmt/format.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <toml++/toml.h>
#include <unistd.h>

#include "lib/text.h"
#include "lib/classify.h"
#include "lib/file_io.h"
#include "lib/owned.h"
#include "lib/transports/tcp.h"

namespace pkirelay::agent {
namespace {

namespace fs = std::filesystem;

enum class Type { String, Path, Int, Bool, Choice, Routes };

template <class S> struct Key {
    std::string_view name; // dotted for the global sections ("store.path")
    Type type;
    std::variant<std::string S::*, std::int64_t S::*, bool S::*, std::map<Kind, std::string> S::*>
        member;
    std::string_view defaultText;
    std::int64_t min = 0;
    std::int64_t max = 0;
    std::vector<std::string_view> choices = {};
    std::string_view help = {};
    bool required = false;
};

const std::vector<Key<Settings>> &settingsKeys() {
    using S = Settings;
    // One key per entry reads as the table it is.
    // clang-format off
    static const std::vector<Key<S>> keys = {
        {"store.path",
         Type::Path,
         &S::storePath,
         "/var/lib/pkirelay/pkirelay.db",
         0,
         0,
         {},
         "The SQLite database (WAL mode: its folder must be writable and local)."},
        {"limits.max_message_size",
         Type::Int,
         &S::maxMessageSize,
         "4194304",
         1024,
         268435456,
         {},
         "Largest message accepted, in bytes; a larger file is quarantined unread."},
        {"limits.batch_size",
         Type::Int,
         &S::batchSize,
         "256",
         1,
         10000,
         {},
         "Most items a stage takes into one transaction."},
        {"limits.max_in_flight",
         Type::Int,
         &S::maxInFlight,
         "16",
         1,
         1024,
         {},
         "Most requests sent to endpoints at the same time."},
        {"limits.settle_seconds",
         Type::Int,
         &S::settleSeconds,
         "60",
         0,
         86400,
         {},
         "A truncated file modified less than this long ago is taken to be still arriving and "
         "is left for the next scan instead of quarantined."},
        {"run.poll_seconds",
         Type::Int,
         &S::pollSeconds,
         "10",
         1,
         3600,
         {},
         "How often the daemon rescans its sources in full and retries waiting deliveries "
         "(inotify wakes it at once for every file; the rescan catches what events miss)."},
        {"retry.initial_seconds",
         Type::Int,
         &S::retryInitialSeconds,
         "30",
         1,
         86400,
         {},
         "Delay before the first retry after a transient failure; doubles each attempt."},
        {"retry.max_delay_seconds",
         Type::Int,
         &S::retryMaxDelaySeconds,
         "3600",
         1,
         604800,
         {},
         "Longest delay between two retries."},
        {"retry.max_age_seconds",
         Type::Int,
         &S::retryMaxAgeSeconds,
         "86400",
         60,
         31536000,
         {},
         "After this long since it arrived, an item that still fails transiently is failed "
         "(at a directory endpoint: its await_max_age_seconds instead)."},
        {"metrics.file",
         Type::Path,
         &S::metricsFile,
         "none",
         0,
         0,
         {},
         "A Prometheus text file for node_exporter's textfile collector (items by state, relays "
         "by endpoint and outcome, relay latency, oldest waiting item), rewritten atomically "
         "every run.poll_seconds and at the end of a batch."},
        {"log.level",
         Type::Choice,
         &S::logLevel,
         "info",
         0,
         0,
         {"debug", "info", "warning", "error"},
         "Least severe log line written (to stderr). --verbose (debug) and --quiet (warning) "
         "override it."},
    };
    // clang-format on
    return keys;
}

const std::vector<Key<SourceConfig>> &sourceKeys() {
    using S = SourceConfig;
    // One key per entry reads as the table it is.
    // clang-format off
    static const std::vector<Key<S>> keys = {
        {"type",
         Type::Choice,
         &S::type,
         "directory",
         0,
         0,
         {"directory", "imap", "media", "media-return"},
         "What kind of source this is: directory (a watched folder); imap (an enrollment mailbox "
         "read over IMAP(S) and answered by SMTP(S)); media (the offline side of an air gap: the "
         "stick's request folder, checked against its manifests, answers written to responses "
         "with a return manifest); media-return (the online side: the stick's return folder, "
         "each answer matched to the request it answers)."},
        {"path",
         Type::Path,
         &S::path,
         "(required for directory)",
         0,
         0,
         {},
         "The folder watched for request files."},
        {"responses",
         Type::Path,
         &S::responses,
         "the value of path",
         0,
         0,
         {},
         "The folder response files are written to, named after the request."},
        {"after",
         Type::Choice,
         &S::after,
         "keep",
         0,
         0,
         {"keep", "move", "delete"},
         "What happens to a request file once it is committed to the store."},
        {"response_mode",
         Type::Choice,
         &S::responseMode,
         "0600",
         0,
         0,
         {"0600", "0640", "0644"},
         "Permissions of the response files written for this source: 0600 owner only; 0640 "
         "when the people who drop requests share pkirelay's group and read the answers."},
        {"move_to",
         Type::Path,
         &S::moveTo,
         "<path>/processed",
         0,
         0,
         {},
         "Where after = \"move\" puts request files."},
        {"endpoint",
         Type::String,
         &S::endpoint,
         "the only endpoint",
         0,
         0,
         {},
         "The endpoint this source's messages go to (required when there are several)."},
        {"routes",
         Type::Routes,
         &S::routes,
         "none",
         0,
         0,
         {},
         "Per-kind endpoints, e.g. routes = { cmc-full-request = \"cmc-ca\" }."},
        {"smime_decrypt_key",
         Type::Path,
         &S::smimeDecryptKey,
         "none",
         0,
         0,
         {},
         "PEM private key that decrypts S/MIME enveloped data in mail and in .eml and .p7m "
         "files (with smime_decrypt_cert). Without it, enveloped data is relayed as it is."},
        {"smime_decrypt_cert",
         Type::Path,
         &S::smimeDecryptCert,
         "none",
         0,
         0,
         {},
         "PEM certificate of smime_decrypt_key: the recipient that enveloped data is for."},
        {"smime_trust_file",
         Type::Path,
         &S::smimeTrustFile,
         "none",
         0,
         0,
         {},
         "PEM bundle that signed S/MIME layers are verified against; a signature that does not "
         "verify makes its content unused. Without it, signed layers are only unwrapped."},
        {"smime_require_signed",
         Type::Bool,
         &S::smimeRequireSigned,
         "false",
         0,
         0,
         {},
         "Only requests under an S/MIME signature that verifies against smime_trust_file are "
         "taken (from mail, and from .eml and .p7m files)."},
        {"url", Type::String, &S::url, "(required for imap)", 0, 0, {},
         "imap: the mailbox server, imaps://host[:port]/ (TLS) or imap://host[:port]/ "
         "(STARTTLS, required)."},
        {"user", Type::String, &S::user, "(required for imap)", 0, 0, {},
         "imap: the login name."},
        {"password_file", Type::Path, &S::passwordFile, "none", 0, 0, {},
         "imap: a file (mode 0600) holding the password (one line)."},
        {"password_env", Type::String, &S::passwordEnv, "none", 0, 0, {},
         "imap: the environment variable holding the password, instead of password_file."},
        {"bearer_token_file", Type::Path, &S::bearerTokenFile, "none", 0, 0, {},
         "imap: a file (mode 0600) holding an OAuth2 bearer token (SASL XOAUTH2), instead of a "
         "password."},
        {"ca_file", Type::Path, &S::caFile, "the system's trust store", 0, 0, {},
         "imap: PEM CA certificates the IMAP and SMTP servers are verified against."},
        {"verify_tls", Type::Bool, &S::verifyTls, "true", 0, 0, {},
         "imap: verify the servers' certificates and names."},
        {"mailbox", Type::String, &S::mailbox, "INBOX", 0, 0, {},
         "imap: the mailbox requests are mailed to."},
        {"processed_mailbox", Type::String, &S::processedMailbox, "processed", 0, 0, {},
         "imap: where a mail goes once its requests are stored (created when missing)."},
        {"rejected_mailbox", Type::String, &S::rejectedMailbox, "rejected", 0, 0, {},
         "imap: where a mail that is not relayed goes (no request, auto-generated, a bounce, "
         "list traffic, a sender not allowed, over the rate limit); the reason is logged."},
        {"idle", Type::Bool, &S::idle, "true", 0, 0, {},
         "imap: wait for new mail with IDLE when the server has it (else run.poll_seconds "
         "polls)."},
        {"smtp_url", Type::String, &S::smtpUrl, "(required for imap)", 0, 0, {},
         "imap: the SMTP server replies are sent through, smtps://host[:port] or "
         "smtp://host[:port] (STARTTLS when offered; required with smtp_user)."},
        {"smtp_user", Type::String, &S::smtpUser, "none", 0, 0, {},
         "imap: the SMTP AUTH login, when the server needs one."},
        {"smtp_password_file", Type::Path, &S::smtpPasswordFile, "none", 0, 0, {},
         "imap: a file (mode 0600) holding smtp_user's password."},
        {"smtp_timeout_seconds", Type::Int, &S::smtpTimeoutSeconds, "30", 1, 600, {},
         "imap: how long one reply's SMTP exchange may take; a reply whose whole mail went out "
         "without an answer in that time is sent again later, recorded as a resend."},
        {"reply_from", Type::String, &S::replyFrom, "(required for imap)", 0, 0, {},
         "imap: the From: address of the replies (usually the enrollment address)."},
        {"allow_senders", Type::String, &S::allowSenders, "anyone", 0, 0, {},
         "imap: addresses and domains that may submit, separated by commas or spaces "
         "(\"ann@example.org, example.net\"); mail from others is rejected unanswered."},
        {"rate_limit_per_hour", Type::Int, &S::rateLimitPerHour, "0", 0, 100000, {},
         "imap: most request mails relayed per sender in the last hour (0: no limit); more "
         "are rejected unanswered. Counted in the store, so it holds across runs."},
        {"require_manifest",
         Type::Bool,
         &S::requireManifest,
         "true",
         0,
         0,
         {},
         "media, media-return: a file no manifest lists waits for one (false: it is taken "
         "as it is; a manifest, when there, is still checked)."},
        {"verify_cert",
         Type::Path,
         &S::verifyCert,
         "none",
         0,
         0,
         {},
         "media, media-return: PEM certificate whose key must have signed each manifest "
         "(NAME.manifest.p7s, detached CMS); unsigned or badly signed manifests are refused."},
        {"sign_cert",
         Type::Path,
         &S::signCert,
         "none",
         0,
         0,
         {},
         "media: PEM certificate to sign the return manifests with (with sign_key)."},
        {"sign_key",
         Type::Path,
         &S::signKey,
         "none",
         0,
         0,
         {},
         "media: PEM private key of sign_cert."},
    };
    // clang-format on
    return keys;
}

const std::vector<Key<EndpointConfig>> &endpointKeys() {
    using S = EndpointConfig;
    // One key per entry reads as the table it is.
    // clang-format off
    static const std::vector<Key<S>> keys = {
        {"type", Type::Choice, &S::type, "from the url", 0, 0,
         {"http", "cmc-tcp", "cmp-tcp", "directory"},
         "How messages are carried: http (covers https); cmc-tcp, CMC over TCP (RFC 5273 §5); "
         "cmp-tcp, the legacy CMP-over-TCP protocol (RFC 2510 §5.2 and its version 10); "
         "directory (the online side of an air gap: requests are written onto removable media "
         "with a manifest per batch, and wait for their answers to come back on a media-return "
         "source)."},
        {"url", Type::String, &S::url, "(required, except for directory)", 0, 0, {},
         "http(s)://host[:port]/path: where requests are POSTed, used as given (CMP: usually "
         ".../.well-known/cmp). cmc-tcp://host[:port] (port 5318) or cmp-tcp://host[:port] "
         "(port 829); cmc-tcps:// and cmp-tcps:// for TLS. An http(s) url may hold an HTTP "
         "Basic login (user:password@), never printed; a tcp url may not."},
        {"path", Type::Path, &S::path, "(required for directory)", 0, 0, {},
         "directory: the media folder requests are written into."},
        {"await_max_age_seconds", Type::Int, &S::awaitMaxAgeSeconds, "2592000 (30 days)", 60,
         315360000, {},
         "directory: how long a request may wait: for the media folder to be there (since it "
         "arrived; retry.max_age_seconds does not apply), then on the media for its answer "
         "(since it was written); then it fails."},
        {"sign_cert", Type::Path, &S::signCert, "none", 0, 0, {},
         "directory: PEM certificate to sign the batch manifests with (with sign_key)."},
        {"sign_key", Type::Path, &S::signKey, "none", 0, 0, {},
         "directory: PEM private key of sign_cert."},
        {"connect_timeout_seconds", Type::Int, &S::connectTimeoutSeconds, "10", 1, 600, {},
         "Longest wait for a connection."},
        {"timeout_seconds", Type::Int, &S::timeoutSeconds, "60", 1, 3600, {},
         "Longest wait for a whole exchange."},
        {"ca_file", Type::Path, &S::caFile, "the system's trust store", 0, 0, {},
         "PEM file of CA certificates that TLS servers are verified against."},
        {"ca_path", Type::Path, &S::caPath, "none", 0, 0, {},
         "A directory of CA certificates by hash (`openssl rehash`), beside or instead of "
         "ca_file."},
        {"verify_tls", Type::Bool, &S::verifyTls, "true", 0, 0, {},
         "Verify the TLS server's certificate and name. Turn off only for one test endpoint."},
        {"pinned_public_key", Type::String, &S::pinnedPublicKey, "none", 0, 0, {},
         "Accept only a server with this public key: sha256//BASE64 (several joined by ;), or "
         "a PEM or DER public key file. Checked even with verify_tls = false."},
        {"tls_min_version", Type::Choice, &S::tlsMinVersion, "1.2", 0, 0, {"1.2", "1.3"},
         "Oldest TLS version accepted (BCP 195)."},
        {"client_cert", Type::Path, &S::clientCert, "none", 0, 0, {},
         "PEM client certificate for mutual TLS (with client_key)."},
        {"client_key", Type::Path, &S::clientKey, "none", 0, 0, {},
         "PEM private key of client_cert."},
        {"max_connections", Type::Int, &S::maxConnections, "4", 1, 64, {},
         "Most parallel connections to this endpoint (1 for single-threaded servers such as "
         "`openssl cmp -port`)."},
        {"keep_alive", Type::Bool, &S::keepAlive, "true", 0, 0, {},
         "Reuse connections. Set false for servers that tie a transaction to its connection, "
         "such as OpenSSL 3.0's `openssl cmp -port` (a later certConf would be refused)."},
        {"proxy", Type::String, &S::proxy, "none", 0, 0, {},
         "http only: the HTTP proxy to go through (http://host:port)."},
        {"follow_redirects", Type::Bool, &S::followRedirects, "false", 0, 0, {},
         "http only: follow 3xx redirects (POST kept, never from https to http). Off by "
         "default: RFC 9811 §3.1 warns that a stored redirect can be abused."},
        {"cmp_profile", Type::String, &S::cmpProfile, "none", 0, 0, {},
         "http only: a CMP profile or CA label; the url's path becomes "
         "/.well-known/cmp/p/<label> (RFC 9811 §3)."},
        {"poll_max_seconds", Type::Int, &S::pollMaxSeconds, "600", 0, 86400, {},
         "cmp-tcp only: the longest transport-level pollRep wait pkirelay sits out; a longer "
         "one defers the item."},
    };
    // clang-format on
    return keys;
}

const std::vector<Key<RouteConfig>> &routeKeys() {
    using S = RouteConfig;
    // clang-format off
    static const std::vector<Key<S>> keys = {
        {"source", Type::String, &S::source, "any", 0, 0, {},
         "Matches messages from this source."},
        {"kind", Type::String, &S::kind, "any", 0, 0, {},
         "Matches these kinds, comma-separated (cmc-simple-request, cmc-full-request, "
         "cmc-enveloped, cmp)."},
        {"cmp_body", Type::String, &S::cmpBody, "any", 0, 0, {},
         "Matches CMP messages with these body types, comma-separated names or numbers (ir, cr, "
         "p10cr, kur, rr, genm, certConf, pollReq, ckuann, cann, rann, crlann, ...; \"ann\" is "
         "the four announcements)."},
        {"endpoint", Type::String, &S::endpoint, "(required)", 0, 0, {},
         "Where matching messages go.", true},
    };
    // clang-format on
    return keys;
}

class Problems {
public:
    explicit Problems(std::string file) : file_(std::move(file)) {}
    void add(const toml::source_region &where, const std::string &message) {
        if (where.begin.line > 0)
            list_.push_back(
                fmt::format("{}:{}:{}: {}", file_, where.begin.line, where.begin.column, message));
        else
            list_.push_back(fmt::format("{}: {}", file_, message));
    }
    void add(const std::string &message) { list_.push_back(fmt::format("{}: {}", file_, message)); }
    std::vector<std::string> &list() { return list_; }

private:
    std::string file_;
    std::vector<std::string> list_;
};

// A configured path in its one canonical spelling, so that one folder is one string wherever the
// store and the stages compare folders: absolute, without "." or "..", without a trailing slash,
// and with every folder above the last component resolved (symlinks included). The last
// component itself is kept as written, so that a watched folder that is a symlink can still be
// seen, and refused (see checkFolders).
std::string resolvePath(const fs::path &base, std::string_view value) {
    fs::path p(value);
    if (p.is_relative())
        p = base / p;
    p = p.lexically_normal();
    if (!p.has_filename() && p.has_parent_path() && p != p.root_path())
        p = p.parent_path(); // "/srv/in/" -> "/srv/in"
    if (p == p.root_path())
        return p.string();
    std::error_code ec;
    const fs::path parent = fs::weakly_canonical(p.parent_path(), ec);
    return (ec ? p : parent / p.filename()).string();
}

// Folders pkirelay reads and writes are never reached through a symlink (lib/file_io.h opens
// them with O_NOFOLLOW): a watched folder, a responses folder and move_to are refused the same
// way, here and so at start.
void checkFolders(const SourceConfig &source, Problems &problems);

// A PEM file that must hold at least one certificate (ca_file, client_cert): a missing or
// unreadable one is a configuration error, not a reason to defer every request.
std::optional<std::string> certificateFileProblem(const std::string &file);

// A key whose value is a file holding a secret, by its name: client_key today, and any later
// *_key, *password*, *secret* or *token* path key without a change here.
bool isSecretKey(std::string_view name) {
    return name.ends_with("_key") || name == "key" ||
           name.find("password") != std::string_view::npos ||
           name.find("secret") != std::string_view::npos ||
           name.find("token") != std::string_view::npos;
}

// Why the secret file at path must not be used, or empty. A file that does not exist (yet) is
// left to environmentWarnings. stat follows symlinks: the mode and owner that matter are the
// file's own, however it is reached (a link in /etc/ssl/private is common).
std::string secretFileProblem(const std::string &path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0)
        return {};
    if ((st.st_mode & (S_IRWXG | S_IRWXO)) != 0)
        return fmt::format("{} has mode {:04o}: group or others may read or change it; a secret "
                           "file must be readable by its owner only (chmod 600 {})",
                           path, st.st_mode & 07777, path);
    if (st.st_uid != ::geteuid() && st.st_uid != 0)
        return fmt::format("{} belongs to uid {}, neither the running user (uid {}) nor root; a "
                           "secret file must be owned by one of them",
                           path, st.st_uid, ::geteuid());
    return {};
}

bool isRequestKind(Kind kind) {
    return kind == Kind::CmcSimpleRequest || kind == Kind::CmcFullRequest ||
           kind == Kind::CmcEnveloped || kind == Kind::Cmp;
}

template <class S>
void applyKey(const Key<S> &key, const toml::node &node, const std::string &where, S &target,
              const fs::path &base, Problems &problems) {
    const auto bad = [&](std::string_view expected) {
        problems.add(node.source(), fmt::format("{} must be {}", where, expected));
    };
    switch (key.type) {
    case Type::String:
    case Type::Path:
    case Type::Choice: {
        const auto *value = node.as_string();
        if (!value)
            return bad("a string");
        std::string text = value->get();
        if (key.type == Type::Choice &&
            std::find(key.choices.begin(), key.choices.end(), text) == key.choices.end())
            return bad(fmt::format("one of \"{}\"", fmt::join(key.choices, "\", \"")));
        if (key.type == Type::Path) {
            if (text.empty())
                return bad("a non-empty path");
            text = resolvePath(base, text);
            if (isSecretKey(key.name))
                if (const std::string problem = secretFileProblem(text); !problem.empty())
                    problems.add(node.source(), fmt::format("{}: {}", where, problem));
        }
        target.*std::get<std::string S::*>(key.member) = std::move(text);
        return;
    }
    case Type::Int: {
        const auto *value = node.as_integer();
        if (!value)
            return bad("an integer");
        const std::int64_t v = value->get();
        if (v < key.min || v > key.max)
            return bad(fmt::format("between {} and {}", key.min, key.max));
        target.*std::get<std::int64_t S::*>(key.member) = v;
        return;
    }
    case Type::Bool: {
        const auto *value = node.as_boolean();
        if (!value)
            return bad("true or false");
        target.*std::get<bool S::*>(key.member) = value->get();
        return;
    }
    case Type::Routes: {
        const auto *table = node.as_table();
        if (!table)
            return bad("a table of kind = \"endpoint\"");
        auto &routes = target.*std::get<std::map<Kind, std::string> S::*>(key.member);
        for (const auto &[kindName, endpointNode] : *table) {
            const auto kind = kindFromId(kindName.str());
            if (!kind || !isRequestKind(*kind)) {
                problems.add(endpointNode.source(),
                             fmt::format("{}: \"{}\" is not a request kind (cmc-simple-request, "
                                         "cmc-full-request, cmc-enveloped, cmp)",
                                         where, kindName.str()));
                continue;
            }
            const auto *name = endpointNode.as_string();
            if (!name) {
                problems.add(endpointNode.source(),
                             fmt::format("{}.{} must be an endpoint name", where, kindName.str()));
                continue;
            }
            routes[*kind] = name->get();
        }
        return;
    }
    }
}

// Applies the keys of one TOML table to target. prefix is "store." for the global sections and
// empty for a source or endpoint table; where names the table in messages.
template <class S>
void applyTable(const toml::table &table, std::string_view prefix, const std::vector<Key<S>> &keys,
                const std::string &where, S &target, const fs::path &base, Problems &problems) {
    for (const auto &[name, node] : table) {
        const std::string full = fmt::format("{}{}", prefix, name.str());
        auto key =
            std::find_if(keys.begin(), keys.end(), [&](const Key<S> &k) { return k.name == full; });
        if (key == keys.end()) {
            problems.add(node.source(), fmt::format("unknown key {}.{}", where, name.str()));
            continue;
        }
        applyKey(*key, node, fmt::format("{}.{}", where, name.str()), target, base, problems);
    }
    for (const auto &key : keys) {
        if (!key.required || !key.name.starts_with(prefix))
            continue;
        if (!table.contains(key.name.substr(prefix.size())))
            problems.add(table.source(), fmt::format("{} needs {}", where, key.name));
    }
}

// The [source.NAME] / [endpoint.NAME] sections: tables of named tables.
template <class S>
void applyNamed(const toml::node &node, std::string_view section, const std::vector<Key<S>> &keys,
                std::vector<S> &out, const fs::path &base, Problems &problems) {
    const auto *table = node.as_table();
    if (!table) {
        problems.add(node.source(),
                     fmt::format("{} must be a table of [{}.NAME] tables", section, section));
        return;
    }
    for (const auto &[name, entry] : *table) {
        const auto *entryTable = entry.as_table();
        const std::string where = fmt::format("{}.{}", section, name.str());
        if (!entryTable) {
            problems.add(entry.source(), fmt::format("{} must be a table", where));
            continue;
        }
        S item;
        item.name = name.str();
        applyTable(*entryTable, "", keys, where, item, base, problems);
        out.push_back(std::move(item));
    }
}

void checkFolders(const SourceConfig &source, Problems &problems) {
    for (const auto &[key, folder] :
         {std::pair{"path", &source.path}, std::pair{"responses", &source.responses},
          std::pair{"move_to", &source.moveTo}}) {
        struct stat st {};
        if (!folder->empty() && ::lstat(folder->c_str(), &st) == 0 && S_ISLNK(st.st_mode))
            problems.add(fmt::format("source.{}.{}: {} is a symlink; pkirelay never reads or "
                                     "writes folders through one: name the folder itself",
                                     source.name, key, *folder));
    }
}

std::optional<std::string> certificateFileProblem(const std::string &file) {
    Owned<BIO, ::BIO_free> bio(::BIO_new_file(file.c_str(), "r"));
    if (!bio)
        return fmt::format("cannot read {}: {}", file, std::strerror(errno));
    Owned<X509, ::X509_free> cert(::PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
    ::ERR_clear_error();
    if (!cert)
        return fmt::format("{} holds no PEM certificate", file);
    return std::nullopt;
}

// RFC 9811 §3: a CMP server's paths are /.well-known/cmp, optionally followed by p/<label>
// (arbitraryLabel) and an operation label. A label is one path segment of unreserved
// characters (RFC 3986 §2.3), so that it never needs escaping.
bool isCmpLabel(std::string_view label) {
    return !label.empty() && std::all_of(label.begin(), label.end(), [](unsigned char c) {
        return std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~';
    });
}

// The url's scheme decides the type when none is given; for the TCP types it is parsed into
// host, port and TLS. For http, the CMP well-known path forms are checked (or built from
// cmp_profile) and everything else is used as given.
void checkEndpointUrl(EndpointConfig &e, Problems &problems) {
    const std::string_view url = e.url;
    const std::size_t sep = url.find("://");
    const std::string scheme = sep == std::string_view::npos ? "" : asciiLower(url.substr(0, sep));
    std::string type;
    if (scheme == "http" || scheme == "https")
        type = "http";
    else if (scheme == "cmc-tcp" || scheme == "cmc-tcps")
        type = "cmc-tcp";
    else if (scheme == "cmp-tcp" || scheme == "cmp-tcps")
        type = "cmp-tcp";
    if (type.empty()) {
        problems.add(fmt::format("endpoint.{}.url must start with http://, https://, "
                                 "cmc-tcp://, cmc-tcps://, cmp-tcp:// or cmp-tcps://, not \"{}\"",
                                 e.name, redactUrl(e.url)));
        return;
    }
    // RFC 3986 §3.2.1 userinfo ("user:password@"): curl sends it to an http endpoint as HTTP
    // Basic authentication, so it is taken there, and every message below names the url
    // without it (redactUrl). The TCP protocols have no login: there it is refused.
    const std::string_view rest = url.substr(sep + 3);
    if (rest.substr(0, rest.find_first_of("/?#")).find('@') != std::string_view::npos &&
        type != "http") {
        problems.add(fmt::format("endpoint.{}.url holds a login (user@ or user:password@), which "
                                 "{}:// has no use for: \"{}\"",
                                 e.name, scheme, redactUrl(e.url)));
        return;
    }
    if (e.type.empty())
        e.type = type;
    else if (e.type != type) {
        problems.add(fmt::format("endpoint.{}: type \"{}\" does not go with the url \"{}\" "
                                 "(a {} url)",
                                 e.name, e.type, redactUrl(e.url), type));
        return;
    }
    const auto httpOnly = [&](bool set, std::string_view key) {
        if (set && e.type != "http")
            problems.add(fmt::format("endpoint.{}.{} is for http endpoints only", e.name, key));
    };
    httpOnly(!e.proxy.empty(), "proxy");
    httpOnly(e.followRedirects, "follow_redirects");
    httpOnly(!e.cmpProfile.empty(), "cmp_profile");
    httpOnly(!e.keepAlive, "keep_alive");
    if (e.pollMaxSeconds != 600 && e.type != "cmp-tcp")
        problems.add(
            fmt::format("endpoint.{}.poll_max_seconds is for cmp-tcp endpoints only", e.name));

    if (e.type == "http") {
        const std::size_t slash = rest.find_first_of("/?#");
        std::string path(slash == std::string_view::npos ? "" : rest.substr(slash));
        const std::string authority(rest.substr(0, slash));
        if (authority.empty())
            problems.add(
                fmt::format("endpoint.{}.url has no host: \"{}\"", e.name, redactUrl(e.url)));
        if (!e.cmpProfile.empty()) {
            if (!isCmpLabel(e.cmpProfile))
                problems.add(fmt::format("endpoint.{}.cmp_profile \"{}\" must be one path "
                                         "segment of letters, digits and -._~",
                                         e.name, e.cmpProfile));
            else if (path.empty() || path == "/" || path == "/.well-known/cmp" ||
                     path == "/.well-known/cmp/")
                e.url = fmt::format("{}://{}/.well-known/cmp/p/{}", url.substr(0, sep), authority,
                                    e.cmpProfile);
            else
                problems.add(fmt::format("endpoint.{}: cmp_profile builds the path "
                                         "/.well-known/cmp/p/{}; the url must then have no path "
                                         "or /.well-known/cmp, not {}",
                                         e.name, e.cmpProfile, path));
        } else if (path.rfind("/.well-known/cmp", 0) == 0) {
            // /.well-known/cmp[/p/<label>][/<operation>]: anything else under the well-known
            // name is a typo a CMP server would answer with 404.
            std::string_view tail = std::string_view(path).substr(16);
            bool ok = tail.empty() || tail == "/";
            if (!ok && tail.substr(0, 3) == "/p/") {
                tail.remove_prefix(3);
                const std::size_t next = tail.find('/');
                ok = isCmpLabel(tail.substr(0, next)) &&
                     (next == std::string_view::npos || isCmpLabel(tail.substr(next + 1)));
            } else if (!ok && tail[0] == '/') {
                ok = isCmpLabel(tail.substr(1));
            }
            if (!ok)
                problems.add(fmt::format("endpoint.{}.url: {} is not a CMP well-known path "
                                         "(/.well-known/cmp, /.well-known/cmp/p/<label>, "
                                         "optionally followed by /<operation>; RFC 9811 §3)",
                                         e.name, path));
        }
        return;
    }
    // cmc-tcp://host[:port][/], cmp-tcp://host[:port][/]; IPv6 addresses in brackets.
    e.tls = scheme.back() == 's';
    std::string_view hostPort = rest;
    if (!hostPort.empty() && hostPort.back() == '/')
        hostPort.remove_suffix(1);
    std::string_view host = hostPort, port;
    if (hostPort.substr(0, 1) == "[") {
        const std::size_t close = hostPort.find(']');
        if (close == std::string_view::npos) {
            problems.add(
                fmt::format("endpoint.{}.url: unclosed [ in \"{}\"", e.name, redactUrl(e.url)));
            return;
        }
        host = hostPort.substr(1, close - 1);
        const std::string_view after = hostPort.substr(close + 1);
        if (!after.empty() && after[0] != ':') {
            problems.add(
                fmt::format("endpoint.{}.url: unexpected \"{}\" after the address", e.name, after));
            return;
        }
        port = after.empty() ? after : after.substr(1);
    } else if (const std::size_t colon = hostPort.rfind(':'); colon != std::string_view::npos) {
        host = hostPort.substr(0, colon);
        port = hostPort.substr(colon + 1);
    }
    if (host.empty() || host.find_first_of("/?#@ ") != std::string_view::npos) {
        problems.add(fmt::format("endpoint.{}.url must be {}://host[:port] with no path or user, "
                                 "not \"{}\"",
                                 e.name, scheme, redactUrl(e.url)));
        return;
    }
    e.host = std::string(host);
    e.port = e.type == "cmc-tcp" ? kCmcTcpPort : kCmpTcpPort;
    if (!port.empty()) {
        int value = 0;
        const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
        if (ec != std::errc() || end != port.data() + port.size() || value < 1 || value > 65535) {
            problems.add(
                fmt::format("endpoint.{}.url: port \"{}\" is not 1 to 65535", e.name, port));
            return;
        }
        e.port = static_cast<std::uint16_t>(value);
    }
    if (!e.tls)
        for (const auto &[key, set] :
             {std::pair{"ca_file", !e.caFile.empty()}, std::pair{"ca_path", !e.caPath.empty()},
              std::pair{"client_cert", !e.clientCert.empty()},
              std::pair{"pinned_public_key", !e.pinnedPublicKey.empty()}})
            if (set)
                problems.add(
                    fmt::format("endpoint.{}.{} needs TLS: use {}s://", e.name, key, scheme));
}

// Comma-separated kinds or CMP body types of a [[route]] into its rule.
void parseRoute(const RouteConfig &r, Config &config, Problems &problems) {
    RouteRule rule;
    rule.source = r.source;
    rule.endpoint = r.endpoint;
    rule.origin = r.name;
    const auto split = [](std::string_view text) {
        std::vector<std::string> out;
        std::size_t start = 0;
        while (start <= text.size()) {
            std::size_t end = text.find(',', start);
            if (end == std::string_view::npos)
                end = text.size();
            std::string_view one = text.substr(start, end - start);
            while (!one.empty() && one.front() == ' ')
                one.remove_prefix(1);
            while (!one.empty() && one.back() == ' ')
                one.remove_suffix(1);
            out.emplace_back(one);
            start = end + 1;
        }
        return out;
    };
    if (!r.kind.empty())
        for (const auto &name : split(r.kind)) {
            const auto kind = kindFromId(name);
            if (!kind || !isRequestKind(*kind))
                problems.add(fmt::format("{}.kind: \"{}\" is not a request kind "
                                         "(cmc-simple-request, cmc-full-request, cmc-enveloped, "
                                         "cmp)",
                                         r.name, name));
            else
                rule.kinds.push_back(*kind);
        }
    if (!r.cmpBody.empty())
        for (const auto &name : split(r.cmpBody)) {
            if (name == "ann") { // RFC 9810 §5.3.13: the four announcements, [15] to [18]
                for (int b = 15; b <= 18; ++b)
                    rule.cmpBodies.push_back(b);
                continue;
            }
            int found = -1;
            for (int b = 0; b <= 26 && found < 0; ++b)
                if (asciiLower(cmpBodyName(b)) == asciiLower(name))
                    found = b;
            if (found < 0) {
                int value = -1;
                const auto [end, ec] =
                    std::from_chars(name.data(), name.data() + name.size(), value);
                if (ec == std::errc() && end == name.data() + name.size() && value >= 0 &&
                    value <= 26)
                    found = value;
            }
            if (found < 0)
                problems.add(fmt::format("{}.cmp_body: \"{}\" is not a CMP body type (a name "
                                         "such as ir, cr, p10cr, kur, rr, genm, certConf, rann, "
                                         "or its number 0 to 26)",
                                         r.name, name));
            else
                rule.cmpBodies.push_back(found);
        }
    if (!rule.cmpBodies.empty() && !rule.kinds.empty() &&
        std::find(rule.kinds.begin(), rule.kinds.end(), Kind::Cmp) == rule.kinds.end())
        problems.add(fmt::format("{}: cmp_body matches only CMP messages, but kind does not "
                                 "include cmp",
                                 r.name));
    if (!r.source.empty() && !config.source(r.source))
        problems.add(
            fmt::format("{}.source names \"{}\", which is not a source", r.name, r.source));
    if (!config.endpoint(r.endpoint))
        problems.add(
            fmt::format("{}.endpoint names \"{}\", which is not an endpoint", r.name, r.endpoint));
    config.rules.push_back(std::move(rule));
}

// A mailbox name goes into IMAP commands as a quoted string: printable ASCII only (non-ASCII
// names would need modified UTF-7, RFC 3501 §5.1.3, which is not done).
bool plainMailboxName(const std::string &name) {
    return !name.empty() && std::all_of(name.begin(), name.end(),
                                        [](unsigned char c) { return c >= 0x20 && c < 0x7f; });
}

void checkMailSource(SourceConfig &source, Problems &problems) {
    const auto need = [&](const std::string &value, const char *key) {
        if (value.empty())
            problems.add(fmt::format("source.{} (type imap) needs {}", source.name, key));
    };
    need(source.url, "url");
    need(source.user, "user");
    need(source.smtpUrl, "smtp_url");
    need(source.replyFrom, "reply_from");
    const auto schemeOf = [](std::string_view url) {
        return url.find("://") == std::string_view::npos
                   ? std::string()
                   : asciiLower(url.substr(0, url.find("://")));
    };
    // A login in a URL (RFC 3986 §3.2.1 userinfo, "user:password@host") would be logged with
    // every message that names the URL: refused, without echoing it.
    const auto hasUserinfo = [](std::string_view url) {
        const auto start = url.find("://");
        if (start == std::string_view::npos)
            return false;
        const std::string_view rest = url.substr(start + 3);
        return rest.substr(0, rest.find_first_of("/?#")).find('@') != std::string_view::npos;
    };
    for (const auto &[key, url] : {std::pair{"url", &source.url}, {"smtp_url", &source.smtpUrl}})
        if (hasUserinfo(*url)) {
            problems.add(fmt::format("source.{}.{} holds a login (user@ or user:password@): give "
                                     "it as user and password_file instead",
                                     source.name, key));
            url->clear(); // not echoed by the checks below
        }
    if (!source.url.empty() && schemeOf(source.url) != "imaps" && schemeOf(source.url) != "imap")
        problems.add(fmt::format("source.{}.url must start with imaps:// or imap://, not \"{}\"",
                                 source.name, source.url));
    if (!source.smtpUrl.empty() && schemeOf(source.smtpUrl) != "smtps" &&
        schemeOf(source.smtpUrl) != "smtp")
        problems.add(fmt::format("source.{}.smtp_url must start with smtps:// or smtp://, not "
                                 "\"{}\"",
                                 source.name, source.smtpUrl));
    const int secrets = !source.passwordFile.empty() + !source.passwordEnv.empty() +
                        !source.bearerTokenFile.empty();
    if (secrets != 1)
        problems.add(fmt::format("source.{} (type imap) needs exactly one of password_file, "
                                 "password_env and bearer_token_file",
                                 source.name));
    if (!source.passwordEnv.empty() && !std::getenv(source.passwordEnv.c_str()))
        problems.add(fmt::format("source.{}.password_env: the environment has no {}", source.name,
                                 source.passwordEnv));
    for (const auto *file : {&source.passwordFile, &source.bearerTokenFile,
                             &source.smtpPasswordFile, &source.smimeDecryptKey})
        if (!file->empty() && ::access(file->c_str(), R_OK) != 0)
            problems.add(fmt::format("source.{}: cannot read {}: {}", source.name, *file,
                                     std::strerror(errno)));
    for (const auto &[key, file] : {std::pair{"ca_file", &source.caFile},
                                    std::pair{"smime_decrypt_cert", &source.smimeDecryptCert},
                                    std::pair{"smime_trust_file", &source.smimeTrustFile}})
        if (!file->empty())
            if (auto why = certificateFileProblem(*file))
                problems.add(fmt::format("source.{}.{}: {}", source.name, key, *why));
    if (source.smimeDecryptKey.empty() != source.smimeDecryptCert.empty())
        problems.add(fmt::format("source.{}: smime_decrypt_key and smime_decrypt_cert go together",
                                 source.name));
    if (source.smimeRequireSigned && source.smimeTrustFile.empty())
        problems.add(
            fmt::format("source.{}: smime_require_signed needs smime_trust_file", source.name));
    if (source.smtpUser.empty() != source.smtpPasswordFile.empty())
        problems.add(
            fmt::format("source.{}: smtp_user and smtp_password_file go together", source.name));
    if (!source.replyFrom.empty() &&
        (source.replyFrom.find('@') == std::string::npos ||
         source.replyFrom.find_first_of("<> \t\r\n") != std::string::npos))
        problems.add(fmt::format("source.{}.reply_from must be a bare address (a@b), not \"{}\"",
                                 source.name, source.replyFrom));
    for (const auto &[key, box] : {std::pair{"mailbox", &source.mailbox},
                                   std::pair{"processed_mailbox", &source.processedMailbox},
                                   std::pair{"rejected_mailbox", &source.rejectedMailbox}})
        if (!plainMailboxName(*box))
            problems.add(fmt::format("source.{}.{} must be printable ASCII", source.name, key));
    if (source.processedMailbox == source.mailbox || source.rejectedMailbox == source.mailbox)
        problems.add(fmt::format("source.{}: processed_mailbox and rejected_mailbox must differ "
                                 "from mailbox",
                                 source.name));
    // The folder-only keys mean nothing here; the store still needs a reply_to per arrival, and
    // it is the sender's address (the source sets it).
    if (!source.path.empty())
        problems.add(fmt::format("source.{}: path is for type directory, not imap", source.name));
}

void checkConsistency(Config &config, Problems &problems) {
    if (config.sources.empty())
        problems.add("no sources: add a [source.NAME] table with a path");
    if (config.endpoints.empty())
        problems.add("no endpoints: add an [endpoint.NAME] table with a url");

    for (auto &endpoint : config.endpoints) {
        if (endpoint.type == "directory") {
            if (endpoint.path.empty())
                problems.add(
                    fmt::format("endpoint.{} needs path (type = \"directory\")", endpoint.name));
            if (!endpoint.url.empty())
                problems.add(fmt::format("endpoint.{}: url is for http and tcp endpoints; a "
                                         "directory endpoint writes into path",
                                         endpoint.name));
            if (endpoint.signCert.empty() != endpoint.signKey.empty())
                problems.add(
                    fmt::format("endpoint.{}: sign_cert and sign_key go together", endpoint.name));
            continue;
        }
        if (endpoint.url.empty()) {
            problems.add(fmt::format("endpoint.{} needs url", endpoint.name));
            continue;
        }
        checkEndpointUrl(endpoint, problems);
        if (endpoint.clientCert.empty() != endpoint.clientKey.empty())
            problems.add(
                fmt::format("endpoint.{}: client_cert and client_key go together", endpoint.name));
        for (const auto &[key, file] : {std::pair{"ca_file", &endpoint.caFile},
                                        std::pair{"client_cert", &endpoint.clientCert}})
            if (!file->empty())
                if (auto why = certificateFileProblem(*file))
                    problems.add(fmt::format("endpoint.{}.{}: {}", endpoint.name, key, *why));
        if (!endpoint.caPath.empty() && !fs::is_directory(endpoint.caPath))
            problems.add(fmt::format("endpoint.{}.ca_path: {} is not a directory", endpoint.name,
                                     endpoint.caPath));
        // The pin is checked here as the transports will read it, so that a typo is a
        // configuration error rather than every exchange failing.
        if (!endpoint.pinnedPublicKey.empty()) {
            try {
                TlsOptions probe;
                probe.pinnedPublicKey = endpoint.pinnedPublicKey;
                TlsContext check(probe);
            } catch (const std::exception &e) {
                problems.add(fmt::format("endpoint.{}: {}", endpoint.name, e.what()));
            }
        }
        if (!endpoint.clientKey.empty() && ::access(endpoint.clientKey.c_str(), R_OK) != 0)
            problems.add(fmt::format("endpoint.{}.client_key: cannot read {}: {}", endpoint.name,
                                     endpoint.clientKey, std::strerror(errno)));
    }

    for (auto &source : config.sources) {
        if (source.isMail()) {
            checkMailSource(source, problems);
        } else if (source.path.empty()) {
            problems.add(fmt::format("source.{} needs path", source.name));
            continue;
        }
        if (source.signCert.empty() != source.signKey.empty())
            problems.add(fmt::format("source.{}: sign_cert and sign_key go together", source.name));
        if (!source.signCert.empty() && source.type != "media")
            problems.add(fmt::format("source.{}: sign_cert is for type = \"media\" (the return "
                                     "manifests)",
                                     source.name));
        if (source.responses.empty())
            source.responses = source.path;
        if (source.afterStore() == AfterStore::Move && source.moveTo.empty())
            source.moveTo = (fs::path(source.path) / "processed").string();
        // A folder inside the watched one is where a hostile writer can plant symlinks; it is
        // opened with O_NOFOLLOW, which guards only the last component, so it must be a direct
        // child (lib/file_io.h, Directory::openOrCreate).
        for (const auto *folder : {&source.moveTo, &source.responses}) {
            const fs::path p(*folder), watched(source.path);
            const auto rel = p.lexically_relative(watched);
            if (!folder->empty() && *folder != source.path && !rel.empty() &&
                *rel.begin() != ".." && p.parent_path() != watched)
                problems.add(fmt::format("source.{}: {} is inside the watched folder but not "
                                         "directly in it; use a direct subfolder or a folder "
                                         "outside",
                                         source.name, *folder));
        }
        checkFolders(source, problems);
        if (source.smimeDecryptKey.empty() != source.smimeDecryptCert.empty())
            problems.add(fmt::format("source.{}: smime_decrypt_key and smime_decrypt_cert go "
                                     "together",
                                     source.name));
        if (source.smimeRequireSigned && source.smimeTrustFile.empty())
            problems.add(
                fmt::format("source.{}: smime_require_signed needs smime_trust_file", source.name));
        for (const auto &[key, file] : {std::pair{"smime_decrypt_cert", &source.smimeDecryptCert},
                                        std::pair{"smime_trust_file", &source.smimeTrustFile}})
            if (!file->empty())
                if (auto why = certificateFileProblem(*file))
                    problems.add(fmt::format("source.{}.{}: {}", source.name, key, *why));
        if (source.endpoint.empty() && config.endpoints.size() == 1)
            source.endpoint = config.endpoints.front().name;
        // With [[route]] rules a source may be covered by them alone.
        if (source.endpoint.empty() && config.endpoints.size() > 1 && config.routeTables.empty())
            problems.add(fmt::format("source.{} needs endpoint = \"...\": there are {} endpoints",
                                     source.name, config.endpoints.size()));
        if (!source.endpoint.empty() && !config.endpoint(source.endpoint))
            problems.add(fmt::format("source.{}.endpoint names \"{}\", which is not an endpoint",
                                     source.name, source.endpoint));
        for (const auto &[kind, name] : source.routes)
            if (!config.endpoint(name))
                problems.add(fmt::format("source.{}.routes.{} names \"{}\", which is not an "
                                         "endpoint",
                                         source.name, kindInfo(kind).id, name));
    }
    for (std::size_t i = 0; i < config.sources.size(); ++i)
        for (std::size_t j = i + 1; j < config.sources.size(); ++j)
            if (!config.sources[i].isMail() && config.sources[i].path == config.sources[j].path)
                problems.add(fmt::format("source.{} and source.{} watch the same folder {}",
                                         config.sources[i].name, config.sources[j].name,
                                         config.sources[i].path));
    // A source watching where another moves its stored requests would take each of them in
    // again, as a second arrival with a second response file.
    for (const auto &mover : config.sources)
        for (const auto &watcher : config.sources)
            if (mover.afterStore() == AfterStore::Move && mover.moveTo == watcher.path)
                problems.add(fmt::format("source.{} watches {}, where source.{} moves the requests "
                                         "it stored (move_to): each would be taken in twice and "
                                         "answered twice",
                                         watcher.name, watcher.path, mover.name));
    // The rules in order: [[route]] first, then each source's routes, then its endpoint.
    config.rules.clear();
    for (const auto &r : config.routeTables)
        parseRoute(r, config, problems);
    for (const auto &source : config.sources) {
        for (const auto &[kind, name] : source.routes)
            config.rules.push_back(
                {source.name, {kind}, {}, name, fmt::format("source.{}.routes", source.name)});
        if (!source.endpoint.empty())
            config.rules.push_back(
                {source.name, {}, {}, source.endpoint, fmt::format("source.{}", source.name)});
    }
    if (config.settings.retryMaxDelaySeconds < config.settings.retryInitialSeconds)
        problems.add("retry.max_delay_seconds is shorter than retry.initial_seconds");
}

template <class S>
void appendReference(std::string &out, std::string_view heading, const std::vector<Key<S>> &keys) {
    out += fmt::format(
        "### {}\n\n| key | type | default | allowed | meaning |\n|---|---|---|---|---|\n", heading);
    for (const auto &key : keys) {
        std::string type, allowed;
        switch (key.type) {
        case Type::String:
            type = "string";
            break;
        case Type::Path:
            type = "path";
            break;
        case Type::Int:
            type = "integer";
            allowed = fmt::format("{} to {}", key.min, key.max);
            break;
        case Type::Bool:
            type = "boolean";
            break;
        case Type::Choice:
            type = "string";
            allowed = fmt::format("{}", fmt::join(key.choices, ", "));
            break;
        case Type::Routes:
            type = "table";
            break;
        }
        out += fmt::format("| `{}` | {} | {} | {} | {}{} |\n", key.name, type, key.defaultText,
                           allowed, key.help, key.required ? " Required." : "");
    }
    out += "\n";
}

} // namespace

std::vector<std::string> SourceConfig::allowList() const {
    std::vector<std::string> out;
    std::string current;
    for (char c : allowSenders + " ") {
        if (c == ',' || c == ' ' || c == '\t') {
            if (!current.empty())
                out.push_back(std::move(current));
            current.clear();
        } else {
            current += c;
        }
    }
    return out;
}

AfterStore SourceConfig::afterStore() const {
    if (after == "move")
        return AfterStore::Move;
    if (after == "delete")
        return AfterStore::Delete;
    return AfterStore::Keep;
}

HttpEndpoint EndpointConfig::toHttp() const {
    HttpEndpoint http;
    http.name = name;
    http.url = url;
    http.connectTimeout = std::chrono::seconds(connectTimeoutSeconds);
    http.timeout = std::chrono::seconds(timeoutSeconds);
    http.caFile = caFile;
    http.verifyTls = verifyTls;
    http.clientCert = clientCert;
    http.clientKey = clientKey;
    http.maxConnections = static_cast<unsigned>(maxConnections);
    http.keepAlive = keepAlive;
    http.caPath = caPath;
    http.pinnedPublicKey = pinnedPublicKey;
    http.tlsMinVersion = tlsMinVersion;
    http.proxy = proxy;
    http.followRedirects = followRedirects;
    return http;
}

TcpEndpoint EndpointConfig::toTcp() const {
    TcpEndpoint tcp;
    tcp.name = name;
    tcp.host = host;
    tcp.port = port;
    tcp.connectTimeout = std::chrono::seconds(connectTimeoutSeconds);
    tcp.timeout = std::chrono::seconds(timeoutSeconds);
    tcp.maxConnections = static_cast<unsigned>(maxConnections);
    tcp.maxPollWait = std::chrono::seconds(pollMaxSeconds);
    tcp.tls.enabled = tls;
    tcp.tls.caFile = caFile;
    tcp.tls.caPath = caPath;
    tcp.tls.verify = verifyTls;
    tcp.tls.clientCert = clientCert;
    tcp.tls.clientKey = clientKey;
    tcp.tls.pinnedPublicKey = pinnedPublicKey;
    tcp.tls.minVersion = tlsMinVersion;
    return tcp;
}

bool RouteRule::matches(const std::string &fromSource, Kind kind, int cmpBody) const {
    if (!source.empty() && source != fromSource)
        return false;
    if (!kinds.empty() && std::find(kinds.begin(), kinds.end(), kind) == kinds.end())
        return false;
    if (!cmpBodies.empty() && (kind != Kind::Cmp || std::find(cmpBodies.begin(), cmpBodies.end(),
                                                              cmpBody) == cmpBodies.end()))
        return false;
    return true;
}

spool::RetryPolicy Config::retryPolicy() const {
    spool::RetryPolicy policy;
    policy.initial = settings.retryInitialSeconds * 1000;
    policy.maxDelay = settings.retryMaxDelaySeconds * 1000;
    policy.maxAge = settings.retryMaxAgeSeconds * 1000;
    return policy;
}

const SourceConfig *Config::source(const std::string &name) const {
    auto it = std::find_if(sources.begin(), sources.end(),
                           [&](const SourceConfig &s) { return s.name == name; });
    return it == sources.end() ? nullptr : &*it;
}

const EndpointConfig *Config::endpoint(const std::string &name) const {
    auto it = std::find_if(endpoints.begin(), endpoints.end(),
                           [&](const EndpointConfig &e) { return e.name == name; });
    return it == endpoints.end() ? nullptr : &*it;
}

const EndpointConfig *Config::route(const std::string &sourceName, Kind kind, int cmpBody) const {
    for (const auto &rule : rules)
        if (rule.matches(sourceName, kind, cmpBody))
            return endpoint(rule.endpoint);
    return nullptr;
}

ConfigError::ConfigError(std::vector<std::string> problems)
    : std::runtime_error(problems.empty() ? "configuration error" : problems.front()),
      problems_(std::move(problems)) {}

Config loadConfig(const std::string &path) {
    // Read here rather than by toml::parse_file, so that a file that cannot be read is reported
    // with the system's reason. A configuration larger than this is not one.
    constexpr std::uint64_t maxConfigSize = 1024 * 1024;
    FileRead read;
    try {
        read = readFile(path, maxConfigSize);
    } catch (const IoError &e) {
        throw ConfigError(
            {fmt::format("{}: cannot read the configuration: {}", path, std::strerror(e.error()))});
    }
    if (read.tooLarge)
        throw ConfigError({fmt::format("{}: {} bytes is too large for a configuration file (at "
                                       "most {})",
                                       path, read.size, maxConfigSize)});
    return parseConfig(asChars(read.bytes), path);
}

Config parseConfig(std::string_view text, std::string_view name) {
    const std::string path(name);
    Problems problems(path);
    toml::table root;
    try {
        root = toml::parse(text, path);
    } catch (const toml::parse_error &e) {
        problems.add(e.source(), std::string(e.description()));
        throw ConfigError(std::move(problems.list()));
    }

    Config config;
    config.file = path;
    // Relative paths are taken from the file's folder; a name without one means the current
    // folder (fs::absolute refuses an empty path).
    const fs::path base =
        path.empty() ? fs::current_path() : fs::absolute(fs::path(path)).parent_path();
    for (const auto &[name, node] : root) {
        const std::string section(name.str());
        if (section == "source") {
            applyNamed(node, "source", sourceKeys(), config.sources, base, problems);
        } else if (section == "endpoint") {
            applyNamed(node, "endpoint", endpointKeys(), config.endpoints, base, problems);
        } else if (section == "route") {
            // [[route]]: an array of tables, in the order the rules are tried.
            const auto *array = node.as_array();
            if (!array || !array->is_array_of_tables()) {
                problems.add(node.source(), "route must be written as [[route]] tables");
                continue;
            }
            for (const auto &entry : *array) {
                RouteConfig r;
                r.name = fmt::format("route {}", config.routeTables.size() + 1);
                applyTable(*entry.as_table(), "", routeKeys(), r.name, r, base, problems);
                config.routeTables.push_back(std::move(r));
            }
        } else if (section == "store" || section == "limits" || section == "run" ||
                   section == "retry" || section == "log" || section == "metrics") {
            if (const auto *table = node.as_table())
                applyTable(*table, section + ".", settingsKeys(), section, config.settings, base,
                           problems);
            else
                problems.add(node.source(), fmt::format("{} must be a table", section));
        } else {
            problems.add(
                node.source(),
                fmt::format("unknown section [{}] (known: store, limits, run, retry, log, metrics, "
                            "source.NAME, endpoint.NAME, [[route]])",
                            section));
        }
    }
    checkConsistency(config, problems);
    if (!problems.list().empty())
        throw ConfigError(std::move(problems.list()));
    return config;
}

std::vector<std::string> environmentWarnings(const Config &config) {
    std::vector<std::string> warnings;
    std::error_code ec;
    for (const auto &source : config.sources) {
        if (source.isMail())
            continue;
        if (!fs::is_directory(source.path, ec))
            warnings.push_back(
                fmt::format("source.{}: folder {} does not exist (yet)", source.name, source.path));
        if (source.responses != source.path && !fs::is_directory(source.responses, ec))
            warnings.push_back(fmt::format("source.{}: response folder {} does not exist (yet)",
                                           source.name, source.responses));
        // Anyone on the machine can then drop requests in (and, without the sticky bit, remove
        // or rename them): possibly intended for a shared drop folder, never silently.
        for (const auto *folder : {&source.path, &source.responses}) {
            struct stat st {};
            if (folder == &source.responses && source.responses == source.path)
                continue;
            if (::stat(folder->c_str(), &st) == 0 && S_ISDIR(st.st_mode) &&
                (st.st_mode & S_IWOTH) != 0)
                warnings.push_back(fmt::format(
                    "source.{}: folder {} is world-writable (mode {:04o}): any local user can "
                    "place files there{}",
                    source.name, *folder, st.st_mode & 07777,
                    (st.st_mode & S_ISVTX) ? "" : ", and remove or rename those of others"));
        }
    }
    for (const auto &endpoint : config.endpoints)
        for (const auto *file : {&endpoint.caFile, &endpoint.clientCert, &endpoint.clientKey})
            if (!file->empty() && ::access(file->c_str(), R_OK) != 0)
                warnings.push_back(
                    fmt::format("endpoint.{}: cannot read {}", endpoint.name, *file));
    const fs::path storeDir = fs::path(config.settings.storePath).parent_path();
    if (!fs::is_directory(storeDir, ec))
        warnings.push_back(fmt::format("store.path: folder {} does not exist", storeDir.string()));
    return warnings;
}

std::string keyReference() {
    std::string out;
    appendReference(out, "[store], [limits], [run], [retry], [metrics], [log]", settingsKeys());
    appendReference(out, "[source.NAME]", sourceKeys());
    appendReference(out, "[endpoint.NAME]", endpointKeys());
    appendReference(out, "[[route]]", routeKeys());
    return out;
}

} // namespace pkirelay::agent

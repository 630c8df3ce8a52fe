// Configuration parsing with toml++ (Debian libtomlplusplus-dev). The key tables below are the
// single description of every setting: the parser, the bounds checks and `check-config --keys`
// all read them. Unknown keys are errors, because a misspelt key silently ignored is a setting
// the operator believes in and does not have.
#include "config.h"

#include <algorithm>
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

#include "lib/file_io.h"
#include "lib/owned.h"

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
         "After this long since it arrived, an item that still fails transiently is failed."},
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
         {"directory", "media", "media-return"},
         "What kind of source this is: directory (a watched folder); media (the offline side of "
         "an air gap: the stick's request folder, checked against its manifests, answers written "
         "to responses with a return manifest); media-return (the online side: the stick's "
         "return folder, each answer matched to the request it answers)."},
        {"path",
         Type::Path,
         &S::path,
         "(required)",
         0,
         0,
         {},
         "The folder watched for request files.",
         true},
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
        {"type", Type::Choice, &S::type, "http", 0, 0, {"http", "directory"},
         "How messages are carried: http (covers https), or directory (the online side of an "
         "air gap: requests are written onto removable media with a manifest per batch, and "
         "wait for their answers to come back on a media-return source)."},
        {"url", Type::String, &S::url, "(required for http)", 0, 0, {},
         "Where requests are POSTed, used as given (CMP: usually .../.well-known/cmp)."},
        {"path", Type::Path, &S::path, "(required for directory)", 0, 0, {},
         "directory: the media folder requests are written into."},
        {"await_max_age_seconds", Type::Int, &S::awaitMaxAgeSeconds, "2592000 (30 days)", 60,
         315360000, {},
         "directory: how long a request on the media may wait for its answer; then it fails."},
        {"sign_cert", Type::Path, &S::signCert, "none", 0, 0, {},
         "directory: PEM certificate to sign the batch manifests with (with sign_key)."},
        {"sign_key", Type::Path, &S::signKey, "none", 0, 0, {},
         "directory: PEM private key of sign_cert."},
        {"connect_timeout_seconds", Type::Int, &S::connectTimeoutSeconds, "10", 1, 600, {},
         "Longest wait for a connection."},
        {"timeout_seconds", Type::Int, &S::timeoutSeconds, "60", 1, 3600, {},
         "Longest wait for a whole exchange."},
        {"ca_file", Type::Path, &S::caFile, "the system's trust store", 0, 0, {},
         "PEM file of CA certificates that HTTPS servers are verified against."},
        {"verify_tls", Type::Bool, &S::verifyTls, "true", 0, 0, {},
         "Verify the HTTPS server's certificate and name. Turn off only for one test endpoint."},
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
                problems.add(fmt::format("endpoint.{}: url is for http endpoints; a directory "
                                         "endpoint writes into path",
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
        const std::string_view url = endpoint.url;
        const auto scheme = url.substr(0, url.find("://"));
        std::string lower(scheme);
        std::transform(lower.begin(), lower.end(), lower.begin(),
                       [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
        if (url.find("://") == std::string_view::npos || (lower != "http" && lower != "https"))
            problems.add(fmt::format("endpoint.{}.url must start with http:// or https://, not "
                                     "\"{}\"",
                                     endpoint.name, endpoint.url));
        if (endpoint.clientCert.empty() != endpoint.clientKey.empty())
            problems.add(
                fmt::format("endpoint.{}: client_cert and client_key go together", endpoint.name));
        for (const auto &[key, file] : {std::pair{"ca_file", &endpoint.caFile},
                                        std::pair{"client_cert", &endpoint.clientCert}})
            if (!file->empty())
                if (auto why = certificateFileProblem(*file))
                    problems.add(fmt::format("endpoint.{}.{}: {}", endpoint.name, key, *why));
        if (!endpoint.clientKey.empty() && ::access(endpoint.clientKey.c_str(), R_OK) != 0)
            problems.add(fmt::format("endpoint.{}.client_key: cannot read {}: {}", endpoint.name,
                                     endpoint.clientKey, std::strerror(errno)));
    }

    for (auto &source : config.sources) {
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
        if (source.endpoint.empty() && config.endpoints.size() == 1)
            source.endpoint = config.endpoints.front().name;
        if (source.endpoint.empty() && config.endpoints.size() > 1)
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
            if (config.sources[i].path == config.sources[j].path)
                problems.add(fmt::format("source.{} and source.{} watch the same folder {}",
                                         config.sources[i].name, config.sources[j].name,
                                         config.sources[i].path));
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
    return http;
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

const EndpointConfig *Config::route(const std::string &sourceName, Kind kind) const {
    const SourceConfig *src = source(sourceName);
    if (!src)
        return nullptr;
    if (auto it = src->routes.find(kind); it != src->routes.end())
        return endpoint(it->second);
    return src->endpoint.empty() ? nullptr : endpoint(src->endpoint);
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
                            "source.NAME, endpoint.NAME)",
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
    return out;
}

} // namespace pkirelay::agent

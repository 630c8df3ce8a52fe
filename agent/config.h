// pkirelay's configuration: one TOML file, checked completely before anything runs. The keys are
// declared once, in a table (config.cc) that drives parsing, defaults, bounds, `check-config`
// and the reference printed by `pkirelay check-config --keys` (../shared/STYLE.md, after Kea).
// A minimal file needs one [source.NAME] with a path and one [endpoint.NAME] with a url.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "lib/transports/http.h"
#include "lib/kinds.h"
#include "spool/store.h"

namespace pkirelay::agent {

// What a directory source does with a request file once it is safely in the store.
enum class AfterStore { Keep, Move, Delete };

struct SourceConfig {
    std::string name;
    std::string type = "directory";
    std::string path;      // the watched folder
    std::string responses; // where response files go; default: path
    std::string after = "keep";
    std::string moveTo;                 // for after = "move"; default: <path>/processed
    std::string responseMode = "0600";  // octal permissions of its response files
    std::string endpoint;               // default: the only endpoint, when there is exactly one
    std::map<Kind, std::string> routes; // per-kind endpoint overrides
    // The air-gap chain (type "media" on the offline side, "media-return" on the online side).
    bool requireManifest = true;
    std::string verifyCert;        // manifests must be signed by this certificate
    std::string signCert, signKey; // type "media": sign the return manifests

    AfterStore afterStore() const;
    bool isMedia() const { return type == "media" || type == "media-return"; }
};

struct EndpointConfig {
    std::string name;
    std::string type = "http";
    std::string url;
    std::int64_t connectTimeoutSeconds = 10;
    std::int64_t timeoutSeconds = 60;
    std::string caFile;
    bool verifyTls = true;
    std::string clientCert;
    std::string clientKey;
    std::int64_t maxConnections = 4;
    bool keepAlive = true;
    // type = "directory" (the air-gap chain): the media folder, how long an answer may take,
    // and the optional signing of its manifests.
    std::string path;
    std::int64_t awaitMaxAgeSeconds = 30 * 86400;
    std::string signCert, signKey;

    HttpEndpoint toHttp() const;
};

struct Settings {
    std::string storePath = "/var/lib/pkirelay/pkirelay.db";
    std::int64_t maxMessageSize = 4 * 1024 * 1024;
    std::int64_t batchSize = 256;
    std::int64_t maxInFlight = 16;
    std::int64_t settleSeconds = 60;
    std::int64_t pollSeconds = 10;
    std::int64_t retryInitialSeconds = 30;
    std::int64_t retryMaxDelaySeconds = 3600;
    std::int64_t retryMaxAgeSeconds = 86400;
    std::string metricsFile;       // empty: no metrics file
    std::string logLevel = "info"; // debug, info, warning, error; --verbose/--quiet override it
};

struct Config {
    std::string file; // the file it was read from
    Settings settings;
    std::vector<SourceConfig> sources;
    std::vector<EndpointConfig> endpoints;

    spool::RetryPolicy retryPolicy() const;
    const SourceConfig *source(const std::string &name) const;
    const EndpointConfig *endpoint(const std::string &name) const;
    // The endpoint a message of this kind from this source goes to, or nullptr (no route).
    const EndpointConfig *route(const std::string &source, Kind kind) const;
};

// Every problem found in a configuration file, each as "file:line:col: message".
class ConfigError : public std::runtime_error {
public:
    explicit ConfigError(std::vector<std::string> problems);
    const std::vector<std::string> &problems() const { return problems_; }

private:
    std::vector<std::string> problems_;
};

// Reads and checks a configuration file. Relative paths in it are taken relative to the
// directory of the file. Throws ConfigError listing every problem, not only the first.
Config loadConfig(const std::string &path);

// Checks configuration text as if read from the file `name` (which names it in messages and
// anchors relative paths; nothing reads it). Any text gives a valid Config or a ConfigError,
// never another exception (tests/fuzz/fuzz_config.cc holds it to that). Secret files the text
// names are checked on disk: one that group or others may read, or that belongs to neither the
// running user nor root, is a problem.
Config parseConfig(std::string_view text, std::string_view name);

// Warnings about the environment rather than the file (a source folder that does not exist yet,
// or that anyone may write to; a CA file that cannot be read): check-config prints them; run
// tolerates them per source.
std::vector<std::string> environmentWarnings(const Config &config);

// The key reference, generated from the same table the parser uses (Markdown).
std::string keyReference();

} // namespace pkirelay::agent

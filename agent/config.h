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
#include "lib/transports/tcp_connection.h"
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
    // S/MIME in mail and in .eml and .p7m files (lib/mail/mime.h SmimeConfig)
    std::string smimeDecryptKey, smimeDecryptCert, smimeTrustFile;
    bool smimeRequireSigned = false;
    // The air-gap chain (type "media" on the offline side, "media-return" on the online side).
    bool requireManifest = true;
    std::string verifyCert;        // manifests must be signed by this certificate
    std::string signCert, signKey; // type "media": sign the return manifests

    // type = "imap": an enrollment mailbox (lib/sources/imap.h), answered by SMTP
    // (lib/responders/smtp.h).
    std::string url; // imaps://host[:port]/ or imap://host[:port]/
    std::string user;
    std::string passwordFile, passwordEnv; // the login's password: a file, or a variable
    std::string bearerTokenFile;           // an OAuth2 bearer token instead (SASL XOAUTH2)
    std::string caFile;                    // for IMAPS and SMTPS; default: the system's
    bool verifyTls = true;
    std::string mailbox = "INBOX";
    std::string processedMailbox = "processed";
    std::string rejectedMailbox = "rejected";
    bool idle = true;
    std::string smtpUrl;
    std::string smtpUser, smtpPasswordFile;
    std::string replyFrom;
    std::string allowSenders; // comma- or space-separated addresses and domains
    std::int64_t rateLimitPerHour = 0;
    std::int64_t smtpTimeoutSeconds = 30;

    bool isMail() const { return type == "imap"; }
    std::vector<std::string> allowList() const;
    AfterStore afterStore() const;
    bool isMedia() const { return type == "media" || type == "media-return"; }
};

struct EndpointConfig {
    std::string name;
    std::string type; // "http", "cmc-tcp" or "cmp-tcp"; when not given, from the url's scheme
    std::string url;
    std::int64_t connectTimeoutSeconds = 10;
    std::int64_t timeoutSeconds = 60;
    std::string caFile;
    std::string caPath; // a hashed directory of CA certificates
    bool verifyTls = true;
    std::string clientCert;
    std::string clientKey;
    std::string pinnedPublicKey; // "sha256//BASE64[;...]" or a public key file
    std::string tlsMinVersion = "1.2";
    std::int64_t maxConnections = 4;
    bool keepAlive = true;
    std::string proxy;                 // HTTP only: the proxy for this endpoint
    bool followRedirects = false;      // HTTP only (RFC 9811 §3.1: off unless asked for)
    std::string cmpProfile;            // HTTP only: the url becomes .../.well-known/cmp/p/<profile>
    std::int64_t pollMaxSeconds = 600; // cmp-tcp: longest transport-level pollRep wait

    // Filled in by the checks from url: for the TCP types, where to connect and whether TLS.
    std::string host;
    std::uint16_t port = 0;
    bool tls = false;
    // type = "directory" (the air-gap chain): the media folder, how long an answer may take,
    // and the optional signing of its manifests.
    std::string path;
    std::int64_t awaitMaxAgeSeconds = 30 * 86400;
    std::string signCert, signKey;

    HttpEndpoint toHttp() const;
    TcpEndpoint toTcp() const;
};

// One routing rule: a message goes to the endpoint of the first rule that matches it. An empty
// condition matches anything. A source's `endpoint` and `routes` keys are rules too, after the
// [[route]] list: routes = { KIND = "E" } is { source, kind } -> E; endpoint = "E" is
// { source } -> E.
struct RouteRule {
    std::string source;         // a source name
    std::vector<Kind> kinds;    // message kinds
    std::vector<int> cmpBodies; // CMP PKIBody tags (a rule with them matches only CMP)
    std::string endpoint;
    std::string origin; // where the rule was written, for messages ("route 2", "source.x.routes")
    bool matches(const std::string &source, Kind kind, int cmpBody) const;
};

// A [[route]] table as written (parsed into a RouteRule by the checks).
struct RouteConfig {
    std::string name; // "route N"
    std::string source;
    std::string kind;
    std::string cmpBody;
    std::string endpoint;
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
    std::vector<RouteConfig> routeTables; // [[route]], in order
    std::vector<RouteRule> rules;         // [[route]], then each source's routes and endpoint

    spool::RetryPolicy retryPolicy() const;
    const SourceConfig *source(const std::string &name) const;
    const EndpointConfig *endpoint(const std::string &name) const;
    // The endpoint a message of this kind (and CMP body type, -1 for none) from this source
    // goes to: the first rule that matches; nullptr when none does (no route).
    const EndpointConfig *route(const std::string &source, Kind kind, int cmpBody = -1) const;
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

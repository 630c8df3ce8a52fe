// Builds the sources, transports and responders of a configuration (parts.h).
#include "parts.h"

#include <cstdlib>

#include <fmt/format.h>

#include "lib/file_io.h"
#include "lib/responders/media.h"
#include "lib/responders/response_file.h"
#include "lib/responders/smtp.h"
#include "lib/sources/directory.h"
#include "lib/sources/imap.h"
#include "lib/sources/media.h"
#include "lib/transports/directory.h"
#include "lib/transports/http.h"
#include "lib/transports/tcp.h"

namespace pkirelay::agent {

namespace {

DirectorySourceConfig directoryConfig(const SourceConfig &s, const Settings &settings,
                                      Clock clock) {
    DirectorySourceConfig c;
    c.name = s.name;
    c.path = s.path;
    c.responses = s.responses;
    c.moveTo = s.moveTo;
    switch (s.afterStore()) {
    case AfterStore::Keep:
        c.after = DirectorySourceConfig::After::Keep;
        break;
    case AfterStore::Move:
        c.after = DirectorySourceConfig::After::Move;
        break;
    case AfterStore::Delete:
        c.after = DirectorySourceConfig::After::Delete;
        break;
    }
    c.maxMessageSize = static_cast<std::uint64_t>(settings.maxMessageSize);
    c.settleMs = settings.settleSeconds * 1000;
    c.wallClock = std::move(clock);
    c.smime = {s.smimeDecryptKey, s.smimeDecryptCert, s.smimeTrustFile, s.smimeRequireSigned};
    return c;
}

// A secret's text: the file's first line, or the environment variable's value. Never logged.
std::string readSecret(const std::string &file, const std::string &env) {
    if (!env.empty()) {
        const char *value = std::getenv(env.c_str());
        return value ? value : "";
    }
    if (file.empty())
        return {};
    const FileRead read = readFile(file, 64 * 1024);
    std::string text(asChars(read.bytes));
    if (const auto nl = text.find_first_of("\r\n"); nl != std::string::npos)
        text.resize(nl);
    return text;
}

ImapSourceConfig imapConfig(const SourceConfig &s, const Settings &settings, Clock clock) {
    ImapSourceConfig c;
    c.name = s.name;
    c.url = s.url;
    c.user = s.user;
    c.password = readSecret(s.passwordFile, s.passwordEnv);
    c.bearer = readSecret(s.bearerTokenFile, {});
    c.caFile = s.caFile;
    c.verifyTls = s.verifyTls;
    c.mailbox = s.mailbox;
    c.processedMailbox = s.processedMailbox;
    c.rejectedMailbox = s.rejectedMailbox;
    c.idle = s.idle;
    c.maxMessageSize = static_cast<std::uint64_t>(settings.maxMessageSize);
    c.limits.maxSize = static_cast<std::size_t>(settings.maxMessageSize);
    c.smime = {s.smimeDecryptKey, s.smimeDecryptCert, s.smimeTrustFile, s.smimeRequireSigned};
    c.allowSenders = s.allowList();
    c.ratePerHour = s.rateLimitPerHour;
    c.wallClock = std::move(clock);
    return c;
}

SmtpResponderConfig smtpConfig(const SourceConfig &s, Clock clock) {
    SmtpResponderConfig c;
    c.url = s.smtpUrl;
    c.from = s.replyFrom;
    c.user = s.smtpUser;
    c.password = readSecret(s.smtpPasswordFile, {});
    c.caFile = s.caFile;
    c.verifyTls = s.verifyTls;
    c.timeoutMs = s.smtpTimeoutSeconds * 1000;
    c.wallClock = std::move(clock);
    return c;
}

// The air-gap chain's counters (batch numbers) live beside the store, one file per part.
std::string stateFile(const Settings &settings, std::string_view what, const std::string &name) {
    return fmt::format("{}.{}-{}.seq", settings.storePath, what, name);
}

std::unique_ptr<Source> makeSource(const SourceConfig &s, const Settings &settings, Clock clock) {
    if (!s.isMedia())
        return std::make_unique<DirectorySource>(directoryConfig(s, settings, std::move(clock)));
    MediaSourceConfig m;
    m.directory = directoryConfig(s, settings, std::move(clock));
    m.returnLeg = s.type == "media-return";
    m.requireManifest = s.requireManifest;
    m.verifyCert = s.verifyCert;
    return std::make_unique<MediaSource>(std::move(m));
}

// One transport per endpoint, by its type (config.cc checked the type against the url).
std::unique_ptr<Transport> makeTransport(const EndpointConfig &e, const Settings &settings,
                                         const Clock &clock, const StoreHooks &hooks) {
    if (e.type == "directory") {
        DirectoryEndpoint d;
        d.name = e.name;
        d.path = e.path;
        d.stateFile = stateFile(settings, "endpoint", e.name);
        d.awaitMs = e.awaitMaxAgeSeconds * 1000;
        d.signCert = e.signCert;
        d.signKey = e.signKey;
        d.maxBatch = static_cast<std::size_t>(settings.batchSize);
        d.wallClock = clock;
        if (hooks.filesOut)
            d.filesOut = [f = hooks.filesOut, name = e.name](std::int64_t batch) {
                return f(name, batch);
            };
        return std::make_unique<DirectoryTransport>(std::move(d));
    }
    const auto maxMessage = static_cast<std::size_t>(settings.maxMessageSize);
    if (e.type == "cmc-tcp" || e.type == "cmp-tcp") {
        TcpEndpoint ep = e.toTcp();
        ep.maxMessageSize = maxMessage;
        if (e.type == "cmc-tcp")
            return std::make_unique<CmcTcpTransport>(std::move(ep));
        return std::make_unique<CmpTcpTransport>(std::move(ep));
    }
    HttpEndpoint ep = e.toHttp();
    ep.maxMessageSize = maxMessage;
    return std::make_unique<HttpTransport>(std::move(ep));
}

} // namespace

Responder &Parts::responderFor(const std::string &source) const {
    if (auto it = responderOf.find(source); it != responderOf.end())
        return *it->second;
    return *fallback;
}

Parts buildParts(const Config &config, const Clock &clock, const StoreHooks &hooks) {
    Parts parts;
    std::map<std::string, std::string> creatable;      // responses folder -> its watched folder
    std::map<std::string, mode_t> modes;               // responses folder -> file mode
    std::map<std::string, Responder *> mailResponders; // by source name
    for (const auto &s : config.sources) {
        if (s.isMail()) {
            parts.sources.push_back(
                std::make_unique<ImapSource>(imapConfig(s, config.settings, clock)));
            parts.responders.push_back(std::make_unique<SmtpResponder>(smtpConfig(s, clock)));
            mailResponders[s.name] = parts.responders.back().get();
            continue;
        }
        modes[s.responses] = static_cast<mode_t>(std::stoul(s.responseMode, nullptr, 8));
        parts.sources.push_back(makeSource(s, config.settings, clock));
        if (s.responses != s.path)
            creatable.emplace(s.responses, s.path);
    }
    for (const auto &e : config.endpoints)
        parts.transports[e.name] = makeTransport(e, config.settings, clock, hooks);

    parts.responders.push_back(
        std::make_unique<ResponseFileResponder>(std::move(creatable), std::move(modes)));
    parts.fallback = parts.responders.back().get();
    for (const auto &s : config.sources)
        parts.responderOf[s.name] = parts.fallback;
    for (const auto &[name, responder] : mailResponders)
        parts.responderOf[name] = responder;
    // The offline side of an air gap: its answers go onto the stick with a return manifest.
    for (const auto &s : config.sources) {
        if (s.type != "media")
            continue;
        std::map<std::string, std::string> anchor;
        if (s.responses != s.path)
            anchor.emplace(s.responses, s.path);
        const auto mode = static_cast<mode_t>(std::stoul(s.responseMode, nullptr, 8));
        MediaResponderConfig m;
        m.writer = s.name;
        m.folder = s.responses;
        m.stateFile = stateFile(config.settings, "source", s.name);
        m.signCert = s.signCert;
        m.signKey = s.signKey;
        m.fileMode = mode;
        m.wallClock = clock;
        if (hooks.isOurResponse)
            m.isOurResponse = [f = hooks.isOurResponse, folder = s.responses](
                                  std::string_view name, std::string_view sha256) {
                return f(folder, name, sha256);
            };
        parts.responders.push_back(std::make_unique<MediaResponder>(
            std::make_unique<ResponseFileResponder>(
                std::move(anchor), std::map<std::string, mode_t>{{s.responses, mode}}),
            std::move(m)));
        parts.responderOf[s.name] = parts.responders.back().get();
    }
    return parts;
}

} // namespace pkirelay::agent

// Builds the sources, transports and responders of a configuration (parts.h).
#include "parts.h"

#include "lib/responders/response_file.h"
#include "lib/sources/directory.h"
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
    return c;
}

// One transport per endpoint, by its type (config.cc checked the type against the url).
std::unique_ptr<Transport> makeTransport(const EndpointConfig &e, const Settings &settings) {
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

Parts buildParts(const Config &config, const Clock &clock) {
    Parts parts;
    std::map<std::string, std::string> creatable; // responses folder -> its watched folder
    std::map<std::string, mode_t> modes;          // responses folder -> file mode
    for (const auto &s : config.sources) {
        modes[s.responses] = static_cast<mode_t>(std::stoul(s.responseMode, nullptr, 8));
        parts.sources.push_back(
            std::make_unique<DirectorySource>(directoryConfig(s, config.settings, clock)));
        if (s.responses != s.path)
            creatable.emplace(s.responses, s.path);
    }
    for (const auto &e : config.endpoints)
        parts.transports[e.name] = makeTransport(e, config.settings);

    parts.responders.push_back(
        std::make_unique<ResponseFileResponder>(std::move(creatable), std::move(modes)));
    parts.fallback = parts.responders.back().get();
    for (const auto &s : config.sources)
        parts.responderOf[s.name] = parts.fallback;
    return parts;
}

} // namespace pkirelay::agent

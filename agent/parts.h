// The parts a configuration names, built in one place: the sources (watched folders now; IMAP
// mailboxes and the media return leg plug in here), the transports (one per endpoint, by its
// type) and the responders (one per way an answer goes back; each source names its own). The
// pipeline only ever sees the interfaces (lib/sources/source.h, lib/transports/transport.h,
// lib/responders/responder.h); a new type of source, endpoint or answer is added here and in
// the configuration's key table, and nowhere in the pipeline.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "config.h"
#include "lib/responders/responder.h"
#include "lib/sources/source.h"
#include "lib/media/manifest.h"
#include "lib/transports/transport.h"
#include "spool/store.h"

namespace pkirelay::agent {

using Clock = std::function<spool::Millis()>;

struct Parts {
    std::vector<std::unique_ptr<Source>> sources;                 // in configuration order
    std::map<std::string, std::unique_ptr<Transport>> transports; // by endpoint name
    std::vector<std::unique_ptr<Responder>> responders;
    std::map<std::string, Responder *> responderOf; // by source name
    // Answers to a source no longer in the configuration (removed by a reload while its
    // answers were pending) still go back as response files into the folder they name.
    Responder *fallback = nullptr;

    Responder &responderFor(const std::string &source) const;
};

// What the parts ask of the store (the pipeline holds it): unset, they assume nothing is theirs.
struct StoreHooks {
    // What the store recorded as out on the media for one batch of a directory endpoint
    // (lib/transports/directory.h, DirectoryEndpoint::filesOut).
    std::function<std::vector<media::ManifestEntry>(const std::string &endpoint,
                                                    std::int64_t batch)>
        filesOut;
    // Ledger::isOurResponse, for the media responder's return manifests.
    std::function<bool(std::string_view folder, std::string_view name, std::string_view sha256)>
        isOurResponse;
};

Parts buildParts(const Config &config, const Clock &clock, const StoreHooks &hooks = {});

} // namespace pkirelay::agent

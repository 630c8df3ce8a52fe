// The directory endpoint (issue 17, the air-gap chain): requests routed to it are written onto
// removable media, one file each, named after the item (lib/media/manifest.h), and a manifest
// for the batch. Nothing comes back on this leg: each request is reported Handed, and the item
// waits (state awaiting) until its answer returns on the media's return folder (a media-return
// source) or its configured maximum age passes.
//
// Durability, because the stick may be pulled at any moment: every file of a batch is written
// under a temporary name, synced, renamed, the folder synced; only then is the manifest written
// (its signature first, when manifests are signed), again temp, sync, rename, folder sync. A
// manifest on the media therefore means its whole batch was there. Files of a batch that never
// got its manifest (a stick pulled mid-write, a crash) are removed before the next batch is
// written: their items were not recorded as handed over and are written again. Files of a batch
// without a manifest whose items the store has as out on the media (recorded as handed over:
// the manifest was lost or removed after the batch was written) are kept, and the manifest is
// written again from the store's record of them (filesOut), so that they still travel.
//
// It trusts its configured folder and state file; it writes only names it makes itself.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "lib/media/manifest.h"
#include "lib/transports/transport.h"

namespace pkirelay {

struct DirectoryEndpoint {
    std::string name;
    std::string path;                         // the media folder requests are written into
    std::string stateFile;                    // the batch counter (beside the store)
    std::int64_t awaitMs = 30LL * 86'400'000; // how long an answer may take to come back
    mode_t fileMode = 0600;
    std::string signCert, signKey; // sign manifests (CMS) when both are set
    std::size_t maxBatch = 256;    // most requests per batch (limits.batch_size)
    std::function<std::int64_t()> wallClock;
    // The files of one of this endpoint's batches whose items are out on the media, as the
    // store recorded them (name, size, SHA-256); unset, every file of a batch without a
    // manifest is taken as cut short.
    std::function<std::vector<media::ManifestEntry>(std::int64_t batch)> filesOut;
};

class DirectoryTransport final : public Transport {
public:
    explicit DirectoryTransport(DirectoryEndpoint endpoint);
    ~DirectoryTransport() override;

    const std::string &name() const override { return endpoint_.name; }
    void attach(EventLoop &loop) override;
    std::size_t capacity() const override;
    std::size_t inFlight() const override { return queued_.size(); }
    void send(const Exchange &exchange, OnReply onReply) override;
    std::vector<std::int64_t> abandon() override;

private:
    struct Queued {
        std::int64_t id;
        Kind kind;
        Bytes body;
        OnReply onReply;
    };
    void flush();
    void writeBatch(std::vector<Queued> &batch);
    std::int64_t tidy(const Directory &dir);
    void writeManifest(const Directory &dir, const media::Manifest &manifest);

    DirectoryEndpoint endpoint_;
    EventLoop *loop_ = nullptr;
    std::vector<Queued> queued_;
    bool flushScheduled_ = false;
    // The deferred flush holds a weak reference: a transport retired by a reload may be destroyed
    // (abandoned, nothing in flight) before the loop runs what it deferred.
    std::shared_ptr<char> alive_ = std::make_shared<char>();
    // The batch being flushed: a reply may lead to new sends (claims for freed places), which
    // wait for the next batch.
    std::uint64_t generation_ = 0;
};

} // namespace pkirelay

// The media source (issue 17, the air-gap chain): a watched folder on removable media whose
// files travel in batches with manifests (lib/media/manifest.h). It is a directory source with
// two additions:
// - every file is checked against the manifests in the folder before it is classified: one
//   whose size or SHA-256 differs from its entry (truncated, altered in transit) is quarantined
//   with the reason; one that claims a batch whose manifest does not list it (extra) likewise;
//   one no manifest covers yet waits (its batch may still be being written, or its manifest
//   comes on the next trip) unless require_manifest is off; a file a manifest lists that is not
//   there and was never stored (missing), or is there as a symlink, FIFO or folder (never
//   read), is recorded as quarantined, with the manifest named; only manifests of the source's
//   own leg count ("requests" offline, "responses" on the return leg): one folder may hold both;
// - with verify_cert, a manifest counts only with a valid detached CMS signature by that
//   certificate (NAME.manifest.p7s); an unsigned or badly signed one is refused, loudly.
// Two roles: the offline side reads the requests a directory endpoint wrote (type "media"); the
// online side reads the answers that came back (type "media-return"), whose submissions are
// marked returnLeg so that the store matches each to its request (spool/store.cc).
//
// What it trusts: its configuration (folder, certificate). Not the manifests, not the names,
// not the bytes: all come from a stick anyone may have written.
#pragma once

#include <memory>
#include <set>

#include "lib/media/manifest.h"
#include "lib/sources/directory.h"

namespace pkirelay {

struct MediaSourceConfig {
    DirectorySourceConfig directory; // ignore and check are set by the media source
    bool returnLeg = false;
    bool requireManifest = true;
    std::string verifyCert; // PEM; when set, manifests must be signed by it
};

class MediaSource final : public Source {
public:
    explicit MediaSource(MediaSourceConfig config);
    ~MediaSource() override;

    const std::string &name() const override { return config_.directory.name; }
    void attach(EventLoop &loop, std::function<void()> wake) override;
    void detach() override;
    Taken take(Ledger &ledger, std::size_t maxItems, std::size_t maxBytes, bool full) override;
    std::vector<Ack> acknowledge(const std::vector<std::uint64_t> &tokens) override;
    bool available() const override;

private:
    std::pair<DirectorySourceConfig::Verdict, std::string> check(const std::string &name,
                                                                 ByteView bytes);
    void loadManifests(const Directory &dir);
    void findMissing(Ledger &ledger, const Directory &dir, Taken &taken);

    MediaSourceConfig config_;
    std::unique_ptr<DirectorySource> inner_;
    media::FolderManifests manifests_;
    media::FolderManifests otherLeg_; // the other direction's manifests in the same folder
    std::set<std::string> warned_;    // manifests and names already reported
    std::uint64_t nextToken_ = 1;     // for records of missing files (their own token range)
    static constexpr std::uint64_t ownTokens = 1ULL << 63;
};

} // namespace pkirelay

// The media source (media.h): a directory source whose files are checked against the batch
// manifests beside them.
#include "lib/sources/media.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace pkirelay {

using Verdict = DirectorySourceConfig::Verdict;

MediaSource::MediaSource(MediaSourceConfig config) : config_(std::move(config)) {
    DirectorySourceConfig d = config_.directory;
    d.ignore = [](std::string_view name) {
        return media::isManifestName(name);
    };
    d.check = [this](const std::string &name, ByteView bytes) {
        return check(name, bytes);
    };
    inner_ = std::make_unique<DirectorySource>(std::move(d));
}

MediaSource::~MediaSource() = default;

void MediaSource::attach(EventLoop &loop, std::function<void()> wake) {
    inner_->attach(loop, std::move(wake));
}

void MediaSource::detach() {
    inner_->detach();
}

bool MediaSource::available() const {
    return inner_->available();
}

void MediaSource::loadManifests(const Directory &dir) {
    manifests_ = media::readManifests(dir);
    // Only manifests of the leg this source reads count: the offline side's return manifests
    // may share its folder (responses beside the requests), and its media responder covers
    // what it finds there (MediaResponder::recover), so a return manifest can list a request
    // file whose own batch never got its manifest; taken as its cover, that file would be
    // relayed unchecked, past require_manifest.
    const std::string_view direction = config_.returnLeg ? "responses" : "requests";
    otherLeg_ = {};
    for (const auto &entry : manifests_.good)
        if (entry.second.direction != direction)
            otherLeg_.good.push_back(entry);
    std::erase_if(manifests_.good,
                  [&](const auto &entry) { return entry.second.direction != direction; });
    for (const auto &[file, why] : manifests_.bad)
        if (warned_.insert(file + why).second)
            spdlog::error("- source {}: manifest {} is not used: {}", name(), printable(file),
                          printable(why));
    if (config_.verifyCert.empty())
        return;
    std::erase_if(manifests_.good, [&](const auto &entry) {
        const auto &file = entry.first;
        std::optional<std::string> why;
        try {
            const auto text = dir.read(file, media::maxManifestSize);
            const auto sig = dir.read(file + std::string(media::signatureSuffix), 64 * 1024);
            why = sig.tooLarge ? std::optional<std::string>("signature too large")
                               : media::verifyManifest(text.bytes, sig.bytes, config_.verifyCert);
        } catch (const IoError &e) {
            why = e.error() == ENOENT ? "unsigned (no " + file + ".p7s), and verify_cert is set"
                                      : std::string(e.what());
        }
        if (why && warned_.insert(file + *why).second)
            spdlog::error("- source {}: manifest {} refused: {}; its files wait", name(),
                          printable(file), printable(*why));
        return why.has_value();
    });
}

std::pair<Verdict, std::string> MediaSource::check(const std::string &file, ByteView bytes) {
    if (auto found = manifests_.find(file)) {
        const auto &[manifest, entry] = *found;
        if (entry.size != bytes.size())
            return {Verdict::Reject,
                    fmt::format("{} bytes, but manifest {} lists {}: {}", bytes.size(), manifest,
                                entry.size,
                                bytes.size() < entry.size ? "truncated (the stick pulled "
                                                            "mid-write?)"
                                                          : "altered in transit")};
        if (sha256Hex(bytes) != entry.sha256)
            return {
                Verdict::Reject,
                fmt::format("its SHA-256 differs from manifest {}: altered in transit", manifest)};
        return {Verdict::Accept, ""};
    }
    if (auto n = media::parseMediaName(file)) {
        const std::string batch = media::manifestName("requests", n->batch);
        for (const auto &[manifest, m] : manifests_.good)
            if (manifest == batch)
                return {Verdict::Reject,
                        fmt::format("extra: not listed in manifest {} of its batch", manifest)};
    }
    // One folder for both legs: on the way back, a request file its batch manifest lists is
    // the endpoint's, on its way out, not an answer still arriving (a run that waited on it
    // would never be done while it is on the stick). Offline, a request file that only a
    // return manifest lists still waits: that is no cover for it.
    if (config_.returnLeg && otherLeg_.find(file))
        return {Verdict::Skip, ""};
    if (!config_.requireManifest)
        return {Verdict::Accept, ""};
    if (warned_.insert("wait:" + file).second)
        spdlog::info("- source {}: {} is in no manifest yet; it waits for one", name(),
                     printable(file));
    return {Verdict::Wait, ""};
}

void MediaSource::findMissing(Ledger &ledger, const Directory &dir, Taken &taken) {
    for (const auto &[manifest, m] : manifests_.good) {
        for (const auto &entry : m.files) {
            const auto type = dir.typeOf(entry.name);
            if (type == DirEntry::Type::Regular)
                continue; // there: checked when it is read
            if (ledger.everStored(name(), entry.name, entry.sha256))
                continue; // processed and removed (after = "delete" or "move")
            // A symlink, FIFO or folder where the file should be is never read (the directory
            // source's rule); it is recorded like a missing file, or nothing would say why the
            // entry's item still waits.
            const std::string_view what = !type                              ? ""
                                          : *type == DirEntry::Type::Symlink ? "a symlink"
                                          : *type == DirEntry::Type::Directory
                                              ? "a folder"
                                              : "a FIFO, socket or device";
            // Recorded once: the arrival's hash names the manifest and the entry.
            Submission sub;
            sub.arrival = {name(), entry.name, config_.directory.responses};
            sub.arrivalSha256 = fmt::format("{}:{}:{}:{}", type ? "notfile" : "missing", manifest,
                                            m.sequence, entry.sha256);
            if (ledger.arrival(name(), entry.name, sub.arrivalSha256).state !=
                Ledger::Seen::State::New)
                continue;
            sub.size = entry.size;
            sub.rejectReason =
                type ? fmt::format("not a regular file: listed in manifest {} ({} bytes, SHA-256 "
                                   "{}), but {} is there; not read",
                                   manifest, entry.size, entry.sha256, what)
                     : fmt::format("missing: listed in manifest {} ({} bytes, SHA-256 {}) but "
                                   "not on the media",
                                   manifest, entry.size, entry.sha256);
            if (config_.returnLeg)
                sub.rejectReason = "return leg: " + sub.rejectReason; // as take() marks the rest
            sub.acknowledgedWhenStored = true;
            taken.submissions.push_back(std::move(sub));
            taken.tokens.push_back(ownTokens | nextToken_++);
        }
    }
}

Taken MediaSource::take(Ledger &ledger, std::size_t maxItems, std::size_t maxBytes, bool full) {
    Taken own;
    try {
        const Directory dir = Directory::open(config_.directory.path);
        loadManifests(dir);
        if (full)
            findMissing(ledger, dir, own);
    } catch (const IoError &) {
        manifests_ = {}; // the folder is gone: the inner source says so
    }
    Taken taken = inner_->take(ledger, maxItems, maxBytes, full);
    for (auto &sub : taken.submissions) {
        if (!config_.returnLeg)
            continue;
        if (sub.message) {
            sub.returnLeg = true;
            sub.relay = false; // an answer: matched to its request, never relayed
        } else {
            // Refused on the way back (a manifest check, not a PKI message): `pkirelay media
            // status` counts these with the answers the matching refused.
            sub.rejectReason = "return leg: " + sub.rejectReason;
        }
    }
    for (std::size_t i = 0; i < own.submissions.size(); ++i) {
        taken.submissions.push_back(std::move(own.submissions[i]));
        taken.tokens.push_back(own.tokens[i]);
    }
    return taken;
}

std::vector<Source::Ack> MediaSource::acknowledge(const std::vector<std::uint64_t> &tokens) {
    std::vector<std::uint64_t> inner;
    for (const auto t : tokens)
        if (!(t & ownTokens))
            inner.push_back(t);
    const auto innerAcks = inner_->acknowledge(inner);
    std::vector<Ack> acks;
    std::size_t j = 0;
    for (const auto t : tokens)
        acks.push_back((t & ownTokens) ? Ack::Kept : innerAcks[j++]);
    return acks;
}

} // namespace pkirelay

// The directory endpoint (directory.h): batches of request files and their manifest, written
// durably onto the media folder.
#include "lib/transports/directory.h"

#include <cerrno>
#include <map>
#include <set>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "lib/crash_point.h"
#include "lib/file_io.h"
#include "lib/media/manifest.h"
#include "lib/responders/response_file.h"

namespace pkirelay {

DirectoryTransport::DirectoryTransport(DirectoryEndpoint endpoint)
    : endpoint_(std::move(endpoint)) {
    if (!endpoint_.wallClock)
        throw std::invalid_argument("DirectoryTransport: no clock");
}

DirectoryTransport::~DirectoryTransport() = default;

void DirectoryTransport::attach(EventLoop &loop) {
    loop_ = &loop;
}

std::size_t DirectoryTransport::capacity() const {
    return queued_.size() >= endpoint_.maxBatch ? 0 : endpoint_.maxBatch - queued_.size();
}

void DirectoryTransport::send(const Exchange &exchange, OnReply onReply) {
    // Copied: the batch is written at the end of the turn, after the caller's buffers moved on.
    queued_.push_back({exchange.id, exchange.kind,
                       Bytes(exchange.body.begin(), exchange.body.end()), std::move(onReply)});
    if (flushScheduled_ || loop_ == nullptr)
        return;
    flushScheduled_ = true;
    // Everything sent in this turn is one batch: one manifest, one folder sync.
    loop_->defer([this, alive = std::weak_ptr<char>(alive_)] {
        if (!alive.expired())
            flush();
    });
}

std::vector<std::int64_t> DirectoryTransport::abandon() {
    std::vector<std::int64_t> ids;
    for (const auto &q : queued_)
        ids.push_back(q.id);
    queued_.clear();
    return ids;
}

void DirectoryTransport::flush() {
    flushScheduled_ = false;
    if (queued_.empty())
        return;
    std::vector<Queued> batch = std::move(queued_);
    queued_.clear();
    writeBatch(batch);
}

// The highest batch number named by a manifest in the folder, and the removal of files of
// batches that never got their manifest (ours, cut short; their items are written again). A
// batch without a manifest whose items the store has as out keeps those files, and its manifest
// is written again from the store's record: removed, nothing would write them again (their
// items are awaiting), and they would wait on no stick until await_max_age failed them.
std::int64_t DirectoryTransport::tidy(const Directory &dir) {
    const std::string &endpoint = endpoint_.name;
    std::int64_t highest = 0;
    std::map<std::int64_t, std::set<std::string>> orphans; // batch -> its files
    std::set<std::int64_t> complete;
    for (const auto &e : dir.list()) {
        if (e.type != DirEntry::Type::Regular)
            continue;
        if (e.name.ends_with(".manifest") && e.name.starts_with('b')) {
            const auto digits =
                e.name.substr(1, e.name.size() - 1 - std::string_view(".manifest").size());
            try {
                const auto n = std::stoll(digits);
                highest = std::max<std::int64_t>(highest, n);
                complete.insert(n);
            } catch (const std::exception &) {
            }
        } else if (auto m = media::parseMediaName(e.name)) {
            orphans[m->batch].insert(e.name);
        }
    }
    for (const auto &[batch, names] : orphans) {
        if (complete.contains(batch))
            continue;
        highest = std::max(highest, batch);
        media::Manifest again;
        again.direction = "requests";
        again.sequence = batch;
        again.createdMs = endpoint_.wallClock();
        again.writer = endpoint;
        if (endpoint_.filesOut)
            for (auto &f : endpoint_.filesOut(batch))
                if (names.contains(f.name))
                    again.files.push_back(std::move(f));
        std::set<std::string> kept;
        for (const auto &f : again.files)
            kept.insert(f.name);
        for (const auto &name : names) {
            if (kept.contains(name))
                continue;
            spdlog::warn("- endpoint {}: removing {} from {}: its batch {} has no manifest (cut "
                         "short; its request is written again)",
                         endpoint, name, dir.path(), batch);
            try {
                dir.unlink(name);
            } catch (const IoError &e) {
                spdlog::error("- endpoint {}: {}", endpoint, e.what());
            }
        }
        if (again.files.empty())
            continue;
        // The store's size and hash, not the file's: a file altered on the stick since it was
        // written does not match, and the offline side quarantines it.
        writeManifest(dir, again);
        spdlog::warn("- endpoint {}: the manifest of batch {} was missing from {} while {} of its "
                     "request(s) are out: written again from the store's record",
                     endpoint, batch, dir.path(), again.files.size());
    }
    return highest;
}

// The manifest last (and its signature before it): a manifest present means its batch was
// complete.
void DirectoryTransport::writeManifest(const Directory &dir, const media::Manifest &manifest) {
    const std::string manifestFile = media::manifestName("requests", manifest.sequence);
    const std::string text = media::renderManifest(manifest);
    const ByteView textBytes = asBytes(text);
    Bytes sig;
    std::vector<FileToWrite> tail;
    if (!endpoint_.signCert.empty()) {
        sig = media::signManifest(textBytes, endpoint_.signCert, endpoint_.signKey);
        tail.push_back({&dir, manifestFile + std::string(media::signatureSuffix), sig, ""});
    }
    for (const auto &e : writeFilesDurably(tail, endpoint_.fileMode))
        if (!e.empty())
            throw std::runtime_error(e);
    const FileToWrite m{&dir, manifestFile, textBytes, ""};
    for (const auto &e : writeFilesDurably(std::span(&m, 1), endpoint_.fileMode))
        if (!e.empty())
            throw std::runtime_error(e);
}

void DirectoryTransport::writeBatch(std::vector<Queued> &batch) {
    auto fail = [&](const std::string &why) {
        for (auto &q : batch) {
            Reply r;
            r.id = q.id;
            r.type = Reply::Type::Transient;
            r.detail = why;
            // The stick away is this endpoint's normal state, for days: its requests wait by
            // the endpoint's own clock, not retry.max_age (which is for a CA that is down).
            r.maxAgeMs = endpoint_.awaitMs;
            r.maxAgeKey = "await_max_age_seconds";
            q.onReply(std::move(r));
        }
    };
    std::vector<std::string> names;
    std::int64_t sequence = 0;
    std::string manifestFile;
    try {
        const Directory dir = Directory::open(endpoint_.path);
        removeTemporaryFiles(endpoint_.path);
        sequence = media::nextSequence(endpoint_.stateFile, tidy(dir));
        media::Manifest manifest;
        manifest.direction = "requests";
        manifest.sequence = sequence;
        manifest.createdMs = endpoint_.wallClock();
        manifest.writer = endpoint_.name;
        std::vector<FileToWrite> files;
        for (const auto &q : batch) {
            const std::string sha = sha256Hex(q.body);
            names.push_back(media::requestFileName(sequence, q.id, sha, q.kind));
            manifest.files.push_back({names.back(), q.body.size(), sha});
        }
        for (std::size_t i = 0; i < batch.size(); ++i)
            files.push_back({&dir, names[i], batch[i].body, ""});
        const auto errors = writeFilesDurably(files, endpoint_.fileMode);
        for (const auto &e : errors)
            if (!e.empty())
                throw std::runtime_error(e);
        crashPoint("media-files"); // the batch's files are durable, its manifest is not written
        manifestFile = media::manifestName("requests", sequence);
        writeManifest(dir, manifest);
    } catch (const std::exception &e) {
        // The stick is gone or full: nothing of this batch counts (its files, without a
        // manifest, are removed before the next batch); the items are retried later.
        fail(fmt::format("writing to the media folder {}: {}", endpoint_.path, e.what()));
        return;
    }
    crashPoint("media-written"); // the batch and its manifest are durable, nothing recorded
    spdlog::info("- endpoint {}: batch {} written to {}: {} request(s), {}", endpoint_.name,
                 sequence, endpoint_.path, batch.size(), manifestFile);
    for (std::size_t i = 0; i < batch.size(); ++i) {
        Reply r;
        r.id = batch[i].id;
        r.type = Reply::Type::Handed;
        r.handedAs = names[i];
        r.batch = sequence;
        r.awaitMs = endpoint_.awaitMs;
        r.detail = fmt::format("written to {}/{} (batch {})", endpoint_.path, names[i], sequence);
        batch[i].onReply(std::move(r));
    }
}

} // namespace pkirelay

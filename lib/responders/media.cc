// The media responder (media.h): response files, then the return manifest of the batch.
#include "lib/responders/media.h"

#include <set>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "lib/crash_point.h"
#include "lib/file_io.h"
#include "lib/media/manifest.h"

namespace pkirelay {

namespace {

bool looksTemporaryName(std::string_view name) {
    return name.starts_with('.') || name.ends_with(".tmp") || name.ends_with(".part") ||
           name.ends_with('~');
}

} // namespace

std::vector<DeliveryResult> MediaResponder::deliver(std::span<const DeliveryTask> tasks) {
    auto results = files_->deliver(tasks);
    std::map<std::string, std::vector<std::string>> written; // folder -> names
    for (std::size_t i = 0; i < tasks.size(); ++i)
        if (results[i].type == DeliveryResult::Type::Delivered)
            written[tasks[i].arrival.replyTo].push_back(tasks[i].output);
    crashPoint("media-responses"); // the responses are durable, their manifest is not written
    const bool earlier = coverDue_;
    for (const auto &[folder, names] : written) {
        // The answers are delivered whatever happens to the manifest: a manifest not written
        // now is written later (cover: after the next batch, on a sweep, at the next start).
        if (!writeManifest(folder, names))
            coverDue_ = true;
    }
    // After this batch's own manifest, so that cover() finds only what earlier ones left.
    if (earlier)
        coverDue_ = !cover();
    return results;
}

bool MediaResponder::writeManifest(const std::string &folder,
                                   const std::vector<std::string> &names) {
    std::vector<media::ManifestEntry> files;
    try {
        // What is on the media, read back: the manifest describes the files as they are there.
        const Directory dir = Directory::open(folder);
        for (const auto &name : names) {
            const auto read = dir.read(name, media::maxManifestSize);
            files.push_back({name, read.size, sha256Hex(read.bytes)});
        }
    } catch (const std::exception &e) {
        spdlog::error("- source {}: the return manifest for {} response file(s) in {} was not "
                      "written: {} (written again later)",
                      config_.writer, names.size(), folder, e.what());
        return false;
    }
    return writeManifest(folder, std::move(files));
}

bool MediaResponder::writeManifest(const std::string &folder,
                                   std::vector<media::ManifestEntry> files) {
    const std::size_t count = files.size();
    try {
        const Directory dir = Directory::open(folder);
        media::Manifest m;
        m.direction = "responses";
        m.createdMs = config_.wallClock();
        m.writer = config_.writer;
        m.files = std::move(files);
        std::int64_t highest = 0;
        for (const auto &[file, old] : media::readManifests(dir).good)
            if (old.direction == "responses")
                highest = std::max(highest, old.sequence);
        m.sequence = media::nextSequence(config_.stateFile, highest);
        const std::string manifest = media::manifestName("responses", m.sequence);
        const std::string text = media::renderManifest(m);
        Bytes sig;
        if (!config_.signCert.empty()) {
            sig = media::signManifest(asBytes(text), config_.signCert, config_.signKey);
            const FileToWrite s{&dir, manifest + std::string(media::signatureSuffix), sig, ""};
            for (const auto &e : writeFilesDurably(std::span(&s, 1), config_.fileMode))
                if (!e.empty())
                    throw std::runtime_error(e);
        }
        const FileToWrite f{&dir, manifest, asBytes(text), ""};
        for (const auto &e : writeFilesDurably(std::span(&f, 1), config_.fileMode))
            if (!e.empty())
                throw std::runtime_error(e);
        spdlog::info("- source {}: return manifest {} written to {}: {} response file(s)",
                     config_.writer, manifest, folder, count);
        return true;
    } catch (const std::exception &e) {
        spdlog::error("- source {}: the return manifest for {} response file(s) in {} was not "
                      "written: {} (written again later)",
                      config_.writer, count, folder, e.what());
        return false;
    }
}

void MediaResponder::recover() {
    files_->recover();
    coverDue_ = !cover();
}

void MediaResponder::sweep() {
    // The stick came back, or room was made on it: the manifest that failed is written now,
    // not at the next start (the online side leaves answers in no manifest waiting).
    if (coverDue_)
        coverDue_ = !cover();
}

bool MediaResponder::cover() {
    // Response files no manifest lists: a run that stopped between writing the files and their
    // manifest, or a manifest that could not be written. Only our own answers: anything else a
    // person (or anyone) left in the return folder is not listed as if it were one, since the
    // online side would take it as an answer.
    try {
        const Directory dir = Directory::open(config_.folder);
        const auto manifests = media::readManifests(dir);
        // Each file is read once: its hash asks the store whether it is ours and goes into the
        // manifest.
        std::vector<media::ManifestEntry> uncovered;
        for (const auto &e : dir.list()) {
            if (e.type != DirEntry::Type::Regular || looksTemporaryName(e.name) ||
                media::isManifestName(e.name) || manifests.find(e.name))
                continue;
            media::ManifestEntry entry{e.name, 0, {}};
            try {
                const auto read = dir.read(e.name, media::maxManifestSize);
                entry.size = read.size;
                entry.sha256 = sha256Hex(read.bytes);
            } catch (const std::exception &err) {
                if (!config_.isOurResponse) { // ours, and unreadable now: tried again later
                    spdlog::error("- source {}: the return manifest for {} was not written: {} "
                                  "(written again later)",
                                  config_.writer, config_.folder, err.what());
                    return false;
                }
                continue; // too large or unreadable: none of ours
            }
            if (config_.isOurResponse && !config_.isOurResponse(entry.name, entry.sha256))
                continue;
            uncovered.push_back(std::move(entry));
        }
        return uncovered.empty() || writeManifest(config_.folder, std::move(uncovered));
    } catch (const IoError &) {
        // Not there (the stick is out), or a file that cannot be read: tried again later.
        return false;
    }
}

} // namespace pkirelay

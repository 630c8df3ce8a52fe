// The media responder (issue 17, the offline side of the air-gap chain): answers are written as
// response files, exactly as the response-file responder writes them, into the stick's return
// folder; then a return manifest lists the files of the batch (name, size, SHA-256), signed when
// configured, so the online side can tell a complete return from a stick pulled mid-write. The
// manifest is written after the files are durable; a batch whose manifest was never written (a
// crash, a stick pulled, a stick full) is covered by a manifest of the response files in the
// folder that no manifest lists and that the store says it delivered there (isOurResponse):
// at the next start (recover()), after the next delivery batch and on each sweep of a running
// agent until it is written. Other files in the folder (a person's notes) are never listed.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "lib/media/manifest.h"
#include "lib/responders/response_file.h"

namespace pkirelay {

struct MediaResponderConfig {
    std::string writer;    // the source's name, written into the manifest
    std::string folder;    // the source's responses folder (the stick's return folder)
    std::string stateFile; // the return batch counter (beside the store)
    std::string signCert, signKey;
    mode_t fileMode = 0600;
    std::function<std::int64_t()> wallClock;
    // True when the store delivered a response with these bytes under this name into folder
    // (Ledger::isOurResponse); unset, every file no manifest lists is taken as ours.
    std::function<bool(std::string_view name, std::string_view sha256)> isOurResponse;
};

class MediaResponder final : public Responder {
public:
    MediaResponder(std::unique_ptr<ResponseFileResponder> files, MediaResponderConfig config)
        : files_(std::move(files)), config_(std::move(config)) {}

    void plan(std::span<DeliveryTask> tasks, const Reserved &reserved) override {
        files_->plan(tasks, reserved);
    }
    void recover() override;
    void sweep() override;
    std::vector<DeliveryResult> deliver(std::span<const DeliveryTask> tasks) override;

private:
    // Writes a manifest of these files (all in folder), read back for their sizes and hashes;
    // false when it could not.
    bool writeManifest(const std::string &folder, const std::vector<std::string> &names);
    // The same, for entries whose size and hash the caller has.
    bool writeManifest(const std::string &folder, std::vector<media::ManifestEntry> files);
    // Writes a manifest of our response files in the folder that no manifest lists; true when
    // there were none or it was written.
    bool cover();

    std::unique_ptr<ResponseFileResponder> files_;
    MediaResponderConfig config_;
    bool coverDue_ = false; // a return manifest was not written: cover() until one is
};

} // namespace pkirelay

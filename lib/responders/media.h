// The media responder (issue 17, the offline side of the air-gap chain): answers are written as
// response files, exactly as the response-file responder writes them, into the stick's return
// folder; then a return manifest lists the files of the batch (name, size, SHA-256), signed when
// configured, so the online side can tell a complete return from a stick pulled mid-write. The
// manifest is written after the files are durable; a batch whose manifest was never written (a
// crash, a stick pulled) is covered at the next start (recover()) by a manifest of every
// response file in the folder that no manifest lists.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "lib/responders/response_file.h"

namespace pkirelay {

struct MediaResponderConfig {
    std::string writer;    // the source's name, written into the manifest
    std::string folder;    // the source's responses folder (the stick's return folder)
    std::string stateFile; // the return batch counter (beside the store)
    std::string signCert, signKey;
    mode_t fileMode = 0600;
    std::function<std::int64_t()> wallClock;
};

class MediaResponder final : public Responder {
public:
    MediaResponder(std::unique_ptr<ResponseFileResponder> files, MediaResponderConfig config)
        : files_(std::move(files)), config_(std::move(config)) {}

    void plan(std::span<DeliveryTask> tasks, const Reserved &reserved) override {
        files_->plan(tasks, reserved);
    }
    void recover() override;
    std::vector<DeliveryResult> deliver(std::span<const DeliveryTask> tasks) override;

private:
    // Writes a manifest of these files (all in folder); false when it could not.
    bool writeManifest(const std::string &folder, const std::vector<std::string> &names);

    std::unique_ptr<ResponseFileResponder> files_;
    MediaResponderConfig config_;
};

} // namespace pkirelay

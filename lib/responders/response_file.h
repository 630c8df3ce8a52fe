// The response-file responder: an answer is written into the request's folder (or the source's
// `responses` folder), named after the request with the extension of the answer's kind
// (RFC 10003 §2 and the kind table: .pki, .crp, .p7c), via a temporary name, fsync, rename and
// one fsync of the folder per batch. It never replaces a file: a name is chosen that is free on
// disk and not reserved in the store by another delivery, and the store records it before the
// file is written, so a crash in between rewrites the same file (DESIGN: exactly one response).
//
// It trusts the folder paths it is configured with and the response bytes the store hands it;
// names come from the request file's name, never from message content.
#pragma once

#include <map>
#include <string>

#include "lib/responders/responder.h"

namespace pkirelay {

// The response file's name for a request file: its stem with the extension of the answer's
// kind; attempt > 0 adds ".response" or ".response-N" for a name that is taken. Kept within
// maxOutputName, a long stem is cut and made unique with a hash of the whole name.
// entity: the request was read as a MIME entity (mail::entityFormContext), and so is answered:
// x.eml -> x.response.eml.
std::string responseFileName(const std::string &origin, Kind kind, int attempt,
                             bool entity = false);

// Removes the temporary files writeFilesDurably leaves when a run is killed mid-write (".NAME.ID"
// + temporarySuffix): nothing else names them, and their answers are in the store.
void removeTemporaryFiles(const std::string &folder);

class ResponseFileResponder final : public Responder {
public:
    // creatable: folders the responder may create when missing, each with its anchor (the
    // watched folder of its source). A folder is created only while its anchor exists and the
    // folder's parent is on the anchor's file system: a folder on a stick that is not mounted
    // is waited for, never created on the file system underneath the mount point (where the
    // stick, once mounted, would hide it). Any other folder must exist.
    // modes: the permissions of the files written into a folder (default 0600, owner only).
    explicit ResponseFileResponder(std::map<std::string, std::string> creatable = {},
                                   std::map<std::string, mode_t> modes = {})
        : creatable_(std::move(creatable)), modes_(std::move(modes)) {}

    void plan(std::span<DeliveryTask> tasks, const Reserved &reserved) override;
    std::vector<DeliveryResult> deliver(std::span<const DeliveryTask> tasks) override;
    void recover() override; // removeTemporaryFiles in every folder it writes to

private:
    std::map<std::string, std::string> creatable_; // folder -> anchor
    std::map<std::string, mode_t> modes_;          // folder -> file mode
};

} // namespace pkirelay

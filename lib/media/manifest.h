// The air-gap chain's media format (issue 17): how requests written onto removable media are
// named, and the manifest that travels with each batch. A manifest lists every file of its batch
// with its size and SHA-256, so the other side can tell a complete batch from one whose stick was
// pulled mid-write (files missing or truncated) or whose files were changed in transit. It is
// written last, after the files are durable, through a temporary name and a rename: a manifest
// present means its batch was complete when it was written.
//
// Names carry the item: "b000003-42-1a2b3c4d.p10" is item 42 (its request hashes to 1a2b3c4d...)
// written in batch 3. The offline side names its responses after the request ("...-1a2b3c4d.p7c"),
// so the online side finds the item an answer claims to answer by its name, and then confirms it
// by the protocol (spool/store.cc, the return leg). Nothing here trusts what it parses: names and
// manifests come from a stick that anyone may have written.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "lib/bytes.h"
#include "lib/file_io.h"
#include "lib/kinds.h"

namespace pkirelay::media {

struct ManifestEntry {
    std::string name;
    std::uint64_t size = 0;
    std::string sha256; // lower-case hex
};

struct Manifest {
    std::string direction; // "requests" (online -> offline) or "responses" (offline -> online)
    std::int64_t sequence = 0;
    std::int64_t createdMs = 0; // Unix milliseconds
    std::string writer;         // the agent's endpoint or source name, for people
    std::vector<ManifestEntry> files;
};

// Text, one field per line, so a person can read it on the stick:
//   pkirelay-manifest 1 / direction D / sequence N / created ISO-8601 / writer W / count N /
//   file NAME SIZE SHA256 (one per file) / end
std::string renderManifest(const Manifest &m);
// A manifest, or why the text is not one (a count that does not match, a line cut short, a
// name that is not a plain file name). Bounded: at most maxManifestFiles files.
std::variant<Manifest, std::string> parseManifest(ByteView text);
constexpr std::size_t maxManifestFiles = 100'000;
constexpr std::uint64_t maxManifestSize = 16 * 1024 * 1024;

// "b000003.manifest" for request batches, "r000003.manifest" for response batches; a detached
// CMS signature of a manifest is its name + ".p7s".
std::string manifestName(std::string_view direction, std::int64_t sequence);
bool isManifestName(std::string_view name);
constexpr std::string_view signatureSuffix = ".p7s";

// The name of a request written onto the media, and what such a name (or the name of a response
// to it, any extension) says.
std::string requestFileName(std::int64_t batch, std::int64_t itemId, std::string_view sha256,
                            Kind kind);
struct MediaName {
    std::int64_t batch = 0;
    std::int64_t itemId = 0;
    std::string digest; // the first 8 hex digits of the request's SHA-256
};
std::optional<MediaName> parseMediaName(std::string_view name);

// A durable counter beside the store (file "PATH"): next() returns the next batch number and
// has made it durable before it returns, so a crash never hands the same number out twice.
// floor raises it past numbers seen elsewhere (manifests already on the media); a floor above
// maxSequence is not one an agent wrote (a manifest planted or corrupt on the media) and is
// not taken, so that it can neither overflow the counter nor push it out of what parses.
std::int64_t nextSequence(const std::string &path, std::int64_t floor);
constexpr std::int64_t maxSequence = 999'999'999'999;

// The manifests of a folder, parsed; the ones that do not parse are listed with the reason.
struct FolderManifests {
    std::vector<std::pair<std::string, Manifest>> good; // by file name
    std::vector<std::pair<std::string, std::string>> bad;
    // Looks a file up in every good manifest: the manifest's name and the entry, or nullopt.
    std::optional<std::pair<std::string, ManifestEntry>> find(std::string_view name) const;
};
FolderManifests readManifests(const Directory &dir);

std::string isoTime(std::int64_t unixMs);

} // namespace pkirelay::media

namespace pkirelay::media {

// Optional signing of manifests (CMS SignedData, detached, binary: the manifest's bytes are
// signed as they are, RFC 5652 §5). sign() returns the DER signature; verify() returns nullopt
// when sig is a valid signature over text by exactly the configured certificate's key, else why
// not. The certificate is trusted as configured (no chain): the two agents exchange it once.
Bytes signManifest(ByteView text, const std::string &certFile, const std::string &keyFile);
std::optional<std::string> verifyManifest(ByteView text, ByteView sig, const std::string &certFile);

} // namespace pkirelay::media

// The media format (manifest.h): manifests rendered and parsed strictly, media names, the
// durable batch counter, and the optional CMS signature over a manifest.
#include "lib/media/manifest.h"

#include <cerrno>
#include <charconv>
#include <ctime>
#include <fcntl.h>
#include <filesystem>
#include <unistd.h>

#include <fmt/format.h>
#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/pem.h>

#include "lib/owned.h"

namespace pkirelay::media {

namespace {

bool plainName(std::string_view name) {
    if (name.empty() || name.size() > maxOutputName || name.starts_with('.'))
        return false;
    for (const unsigned char c : name)
        if (c <= 0x20 || c >= 0x7f || c == '/' || c == '\\')
            return false;
    return true;
}

bool isHex(std::string_view s) {
    for (const char c : s)
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return false;
    return true;
}

template <class T> std::optional<T> number(std::string_view s) {
    T v{};
    if (s.empty() || s.size() > 19)
        return std::nullopt;
    const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc() || p != s.data() + s.size())
        return std::nullopt;
    return v;
}

std::vector<std::string_view> words(std::string_view line) {
    std::vector<std::string_view> out;
    std::size_t i = 0;
    while (i < line.size()) {
        const auto j = line.find(' ', i);
        out.push_back(line.substr(i, j == std::string_view::npos ? line.size() - i : j - i));
        if (j == std::string_view::npos)
            break;
        i = j + 1;
    }
    return out;
}

} // namespace

std::string isoTime(std::int64_t unixMs) {
    const std::time_t t = static_cast<std::time_t>(unixMs / 1000);
    std::tm tm{};
    ::gmtime_r(&t, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

std::string renderManifest(const Manifest &m) {
    std::string out = "pkirelay-manifest 1\n";
    out += fmt::format("direction {}\nsequence {}\ncreated {} {}\nwriter {}\ncount {}\n",
                       m.direction, m.sequence, m.createdMs, isoTime(m.createdMs),
                       m.writer.empty() ? "-" : m.writer, m.files.size());
    for (const auto &f : m.files)
        out += fmt::format("file {} {} {}\n", f.name, f.size, f.sha256);
    out += "end\n";
    return out;
}

std::variant<Manifest, std::string> parseManifest(ByteView text) {
    if (text.size() > maxManifestSize)
        return std::string("too large");
    const std::string_view all(reinterpret_cast<const char *>(text.data()), text.size());
    Manifest m;
    std::optional<std::size_t> count;
    std::size_t pos = 0, lineNo = 0;
    bool ended = false;
    while (pos < all.size()) {
        const auto nl = all.find('\n', pos);
        if (nl == std::string_view::npos)
            return fmt::format("line {} has no end (cut short?)", lineNo + 1);
        const std::string_view line = all.substr(pos, nl - pos);
        pos = nl + 1;
        ++lineNo;
        if (ended)
            return fmt::format("line {}: text after \"end\"", lineNo);
        const auto w = words(line);
        if (w.empty())
            return fmt::format("line {} is empty", lineNo);
        if (lineNo == 1) {
            if (line != "pkirelay-manifest 1")
                return std::string("not a pkirelay manifest (first line)");
            continue;
        }
        if (w[0] == "direction" && w.size() == 2 && (w[1] == "requests" || w[1] == "responses")) {
            m.direction = w[1];
        } else if (w[0] == "sequence" && w.size() == 2 && number<std::int64_t>(w[1])) {
            m.sequence = *number<std::int64_t>(w[1]);
        } else if (w[0] == "created" && w.size() == 3 && number<std::int64_t>(w[1])) {
            m.createdMs = *number<std::int64_t>(w[1]);
        } else if (w[0] == "writer" && w.size() == 2) {
            m.writer = w[1];
        } else if (w[0] == "count" && w.size() == 2 && number<std::size_t>(w[1])) {
            count = number<std::size_t>(w[1]);
            if (*count > maxManifestFiles)
                return fmt::format("count {} is over the limit of {}", *count, maxManifestFiles);
        } else if (w[0] == "file" && w.size() == 4 && plainName(w[1]) &&
                   number<std::uint64_t>(w[2]) && w[3].size() == 64 && isHex(w[3])) {
            if (m.files.size() >= maxManifestFiles)
                return std::string("too many files");
            m.files.push_back({std::string(w[1]), *number<std::uint64_t>(w[2]), std::string(w[3])});
        } else if (w[0] == "end" && w.size() == 1) {
            ended = true;
        } else {
            return fmt::format("line {} is not understood", lineNo);
        }
    }
    if (!ended)
        return std::string("no \"end\" line (cut short?)");
    if (m.direction.empty() || m.sequence <= 0 || !count)
        return std::string("direction, sequence or count missing");
    if (*count != m.files.size())
        return fmt::format("count says {} files, {} are listed", *count, m.files.size());
    return m;
}

std::string manifestName(std::string_view direction, std::int64_t sequence) {
    return fmt::format("{}{:06}.manifest", direction == "requests" ? 'b' : 'r', sequence);
}

bool isManifestName(std::string_view name) {
    return name.ends_with(".manifest") ||
           (name.ends_with(signatureSuffix) &&
            name.substr(0, name.size() - signatureSuffix.size()).ends_with(".manifest"));
}

std::string requestFileName(std::int64_t batch, std::int64_t itemId, std::string_view sha256,
                            Kind kind) {
    return fmt::format("b{:06}-{}-{}{}", batch, itemId, sha256.substr(0, 8),
                       kindInfo(kind).fileExt);
}

std::optional<MediaName> parseMediaName(std::string_view name) {
    // b<digits>-<digits>-<8 hex>, then anything from the first dot on (the extension, or the
    // ".response" a responder adds to a taken name).
    const auto dot = name.find('.');
    const std::string_view stem = name.substr(0, dot);
    if (!stem.starts_with('b'))
        return std::nullopt;
    const auto d1 = stem.find('-');
    const auto d2 = d1 == std::string_view::npos ? d1 : stem.find('-', d1 + 1);
    if (d2 == std::string_view::npos)
        return std::nullopt;
    auto batch = number<std::int64_t>(stem.substr(1, d1 - 1));
    auto item = number<std::int64_t>(stem.substr(d1 + 1, d2 - d1 - 1));
    const auto digest = stem.substr(d2 + 1);
    if (!batch || !item || digest.size() != 8 || !isHex(digest))
        return std::nullopt;
    return MediaName{*batch, *item, std::string(digest)};
}

std::int64_t nextSequence(const std::string &path, std::int64_t floor) {
    std::int64_t last = 0;
    try {
        const auto read = readFile(path, 64);
        std::string_view s(reinterpret_cast<const char *>(read.bytes.data()), read.bytes.size());
        while (!s.empty() && (s.back() == '\n' || s.back() == ' '))
            s.remove_suffix(1);
        if (auto v = number<std::int64_t>(s))
            last = *v;
        else
            throw IoError(fmt::format("{}: not a batch number", path), EINVAL);
    } catch (const IoError &e) {
        if (e.error() != ENOENT)
            throw;
    }
    if (last < 0 || last >= maxSequence)
        throw IoError(fmt::format("{}: batch number {} is out of range", path, last), ERANGE);
    if (floor < 0 || floor >= maxSequence)
        floor = 0; // planted or corrupt: the names it would collide with are never reached
    const std::int64_t next = std::max(last, floor) + 1;
    // Temporary name, fsync, rename over the old value, fsync of the folder: the number is
    // durable before any file of its batch exists.
    const std::filesystem::path p(path);
    const std::string folder = p.has_parent_path() ? p.parent_path().string() : ".";
    const Directory dir = Directory::open(folder);
    const std::string temp = "." + p.filename().string() + ".pkirelay-tmp";
    {
        Fd fd(::openat(dir.fd(), temp.c_str(),
                       O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600));
        if (fd.get() < 0)
            throw IoError("create " + folder + "/" + temp, errno);
        const std::string text = fmt::format("{}\n", next);
        if (::write(fd.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size()) ||
            ::fsync(fd.get()) != 0)
            throw IoError("write " + folder + "/" + temp, errno);
    }
    if (::renameat(dir.fd(), temp.c_str(), dir.fd(), p.filename().c_str()) != 0)
        throw IoError("rename " + folder + "/" + temp, errno);
    dir.sync();
    return next;
}

std::optional<std::pair<std::string, ManifestEntry>>
FolderManifests::find(std::string_view name) const {
    for (const auto &[file, m] : good)
        for (const auto &e : m.files)
            if (e.name == name)
                return std::pair{file, e};
    return std::nullopt;
}

FolderManifests readManifests(const Directory &dir) {
    FolderManifests out;
    for (const auto &entry : dir.list()) {
        if (entry.type != DirEntry::Type::Regular || !entry.name.ends_with(".manifest") ||
            entry.name.starts_with('.'))
            continue;
        try {
            const auto read = dir.read(entry.name, maxManifestSize);
            if (read.tooLarge) {
                out.bad.emplace_back(entry.name, "too large");
                continue;
            }
            auto parsed = parseManifest(read.bytes);
            if (auto *m = std::get_if<Manifest>(&parsed))
                out.good.emplace_back(entry.name, std::move(*m));
            else
                out.bad.emplace_back(entry.name, std::get<std::string>(parsed));
        } catch (const IoError &e) {
            if (e.error() != ENOENT)
                out.bad.emplace_back(entry.name, e.what());
        }
    }
    return out;
}

namespace {

std::string opensslErrors() {
    std::string out;
    while (const unsigned long e = ::ERR_get_error()) {
        char buf[256];
        ::ERR_error_string_n(e, buf, sizeof buf);
        out += out.empty() ? "" : "; ";
        out += buf;
    }
    return out.empty() ? "unknown OpenSSL error" : out;
}

using Bio = Owned<BIO, ::BIO_free>;
using X509Ptr = Owned<X509, ::X509_free>;

X509Ptr readCert(const std::string &file) {
    Bio bio(::BIO_new_file(file.c_str(), "r"));
    if (!bio)
        throw IoError("read " + file, errno);
    X509Ptr cert(::PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
    if (!cert)
        throw std::runtime_error(file + " holds no PEM certificate");
    return cert;
}

Bio memBio(ByteView bytes) {
    if (bytes.size() > static_cast<std::size_t>(INT32_MAX))
        throw std::runtime_error("too large for a memory BIO");
    return Bio(::BIO_new_mem_buf(bytes.data(), static_cast<int>(bytes.size())));
}

void freeCerts(STACK_OF(X509) * s) {
    sk_X509_free(s);
}

} // namespace

Bytes signManifest(ByteView text, const std::string &certFile, const std::string &keyFile) {
    ::ERR_clear_error();
    auto cert = readCert(certFile);
    Bio kb(::BIO_new_file(keyFile.c_str(), "r"));
    if (!kb)
        throw IoError("read " + keyFile, errno);
    Owned<EVP_PKEY, ::EVP_PKEY_free> key(
        ::PEM_read_bio_PrivateKey(kb.get(), nullptr, nullptr, nullptr));
    if (!key)
        throw std::runtime_error(keyFile + ": " + opensslErrors());
    auto in = memBio(text);
    // Detached and binary: the manifest's bytes are the content as they are, no MIME
    // canonicalisation to CRLF (RFC 5652 §5.2, eContent absent for a detached signature).
    Owned<CMS_ContentInfo, ::CMS_ContentInfo_free> cms(
        ::CMS_sign(cert.get(), key.get(), nullptr, in.get(), CMS_DETACHED | CMS_BINARY));
    if (!cms)
        throw std::runtime_error("signing the manifest: " + opensslErrors());
    unsigned char *der = nullptr;
    const int n = ::i2d_CMS_ContentInfo(cms.get(), &der);
    if (n <= 0)
        throw std::runtime_error("encoding the signature: " + opensslErrors());
    Bytes out(der, der + n);
    ::OPENSSL_free(der);
    return out;
}

std::optional<std::string> verifyManifest(ByteView text, ByteView sig,
                                          const std::string &certFile) {
    ::ERR_clear_error();
    X509Ptr cert;
    try {
        cert = readCert(certFile);
    } catch (const std::exception &e) {
        return std::string(e.what());
    }
    const unsigned char *p = sig.data();
    Owned<CMS_ContentInfo, ::CMS_ContentInfo_free> cms(
        ::d2i_CMS_ContentInfo(nullptr, &p, static_cast<long>(sig.size())));
    if (!cms || p != sig.data() + sig.size()) {
        ::ERR_clear_error();
        return std::string("the signature is not one CMS message");
    }
    Owned<STACK_OF(X509), freeCerts> certs(sk_X509_new_null());
    if (!certs || !sk_X509_push(certs.get(), cert.get()))
        return std::string("out of memory");
    auto in = memBio(text);
    // CMS_NOINTERN: the signer must be the configured certificate, not one the signature
    // carries; CMS_NO_SIGNER_CERT_VERIFY: that certificate is trusted as configured (no chain).
    const int ok =
        ::CMS_verify(cms.get(), certs.get(), nullptr, in.get(), nullptr,
                     CMS_DETACHED | CMS_BINARY | CMS_NOINTERN | CMS_NO_SIGNER_CERT_VERIFY);
    if (ok != 1)
        return "bad signature: " + opensslErrors();
    return std::nullopt;
}

} // namespace pkirelay::media

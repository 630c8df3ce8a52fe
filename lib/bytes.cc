// Hex and hashing helpers; SHA-256 comes from OpenSSL's EVP interface.
#include "bytes.h"

#include <stdexcept>

#include <openssl/evp.h>

#include "owned.h"

namespace pkirelay {

std::string toHex(ByteView bytes) {
    static constexpr char digits[] = "0123456789abcdef";
    std::string out;
    out.reserve(bytes.size() * 2);
    for (std::uint8_t b : bytes) {
        out.push_back(digits[b >> 4]);
        out.push_back(digits[b & 0x0f]);
    }
    return out;
}

std::string printable(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    const auto escape = [&](unsigned char c) {
        static constexpr char digits[] = "0123456789abcdef";
        out += "\\x";
        out.push_back(digits[c >> 4]);
        out.push_back(digits[c & 0x0f]);
    };
    for (std::size_t i = 0; i < text.size();) {
        const auto c = static_cast<unsigned char>(text[i]);
        if (c < 0x20 || c == 0x7f) {
            escape(c);
            ++i;
            continue;
        }
        if (c < 0x80) {
            out.push_back(static_cast<char>(c));
            ++i;
            continue;
        }
        // A UTF-8 sequence (RFC 3629 §4): lead byte, then 1-3 continuation bytes, no overlong
        // forms, no surrogates, nothing above U+10FFFF.
        const std::size_t len = c >= 0xc2 && c <= 0xdf   ? 2
                                : c >= 0xe0 && c <= 0xef ? 3
                                : c >= 0xf0 && c <= 0xf4 ? 4
                                                         : 0;
        bool ok = len != 0 && i + len <= text.size();
        for (std::size_t k = 1; ok && k < len; ++k)
            ok = (static_cast<unsigned char>(text[i + k]) & 0xc0) == 0x80;
        if (ok && len >= 3) {
            const auto c1 = static_cast<unsigned char>(text[i + 1]);
            ok = !(c == 0xe0 && c1 < 0xa0) && !(c == 0xed && c1 >= 0xa0) &&
                 !(c == 0xf0 && c1 < 0x90) && !(c == 0xf4 && c1 >= 0x90);
        }
        if (!ok) {
            escape(c);
            ++i;
            continue;
        }
        out.append(text.substr(i, len));
        i += len;
    }
    return out;
}

std::string sha256Hex(ByteView bytes) {
    // Fetched once and one context per thread, reused: EVP_sha256() makes OpenSSL 3 look the
    // algorithm up (under locks) at every digest, and EVP_Digest allocates a context each time;
    // several hashes per message made that a visible share of a run.
    static const Owned<EVP_MD, ::EVP_MD_free> sha256(::EVP_MD_fetch(nullptr, "SHA256", nullptr));
    thread_local const Owned<EVP_MD_CTX, ::EVP_MD_CTX_free> ctx(::EVP_MD_CTX_new());
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (!sha256 || !ctx || ::EVP_DigestInit_ex2(ctx.get(), sha256.get(), nullptr) != 1 ||
        ::EVP_DigestUpdate(ctx.get(), bytes.data(), bytes.size()) != 1 ||
        ::EVP_DigestFinal_ex(ctx.get(), md, &len) != 1)
        throw std::runtime_error("SHA-256 failed in OpenSSL");
    return toHex({md, len});
}

} // namespace pkirelay

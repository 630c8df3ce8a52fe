// Hex and hashing helpers; SHA-256 comes from OpenSSL's EVP interface.
#include "bytes.h"

#include <stdexcept>

#include <openssl/evp.h>

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

std::string sha256Hex(ByteView bytes) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (::EVP_Digest(bytes.data(), bytes.size(), md, &len, ::EVP_sha256(), nullptr) != 1)
        throw std::runtime_error("SHA-256 failed in OpenSSL");
    return toHex({md, len});
}

} // namespace pkirelay

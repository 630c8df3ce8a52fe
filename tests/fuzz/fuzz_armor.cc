// libFuzzer driver for the PEM and base64 armour decoder (lib/armor.h): any text must decode or
// be refused with an armor::Error naming a place inside it, never crash or read out of bounds
// (run it under ASan/UBSan). What it accepts must be canonical armour: the decoded bytes,
// encoded again by OpenSSL's EVP_EncodeBlock, give back exactly the base64 characters of the
// input. Built only with clang (meson -Dfuzz=true); see tests/fuzz/README.md.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include <openssl/evp.h>

#include "lib/armor.h"

namespace {

using namespace pkirelay;

std::string encode(const Bytes &bytes) {
    std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
    const int n = ::EVP_EncodeBlock(reinterpret_cast<unsigned char *>(out.data()), bytes.data(),
                                    static_cast<int>(bytes.size()));
    out.resize(static_cast<std::size_t>(n));
    return out;
}

// The base64 characters (and padding) of a text, everything else left out.
std::string base64Chars(std::string_view text) {
    std::string out;
    for (char c : text)
        if (armor::isBase64Char(static_cast<std::uint8_t>(c)) || c == '=')
            out.push_back(c);
    return out;
}

void checkError(const armor::Error &e, std::size_t size) {
    if (e.reason().empty() || e.offset() > size)
        std::abort();
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t *data, std::size_t size) {
    const ByteView input{data, size};
    const std::string_view text(reinterpret_cast<const char *>(data), size);
    try {
        const Bytes bytes = armor::decodeBase64(input);
        if (bytes.empty() || encode(bytes) != base64Chars(text))
            std::abort();
    } catch (const armor::Error &e) {
        checkError(e, size);
    }
    const bool pem = armor::looksLikePem(input);
    try {
        const armor::Pem block = armor::decodePem(input);
        if (!pem || block.data.empty())
            std::abort();
        // The body is the lines strictly between the BEGIN line and the END line, which is the
        // last line starting with "-----END " (a label may itself hold "-----END ").
        const std::size_t bodyStart = text.find('\n', text.find("-----BEGIN ")) + 1;
        const std::size_t endLine = text.rfind("\n-----END ");
        const std::size_t bodyEnd = endLine == std::string_view::npos ? endLine : endLine + 1;
        if (bodyStart == 0 || bodyEnd == std::string_view::npos || bodyEnd < bodyStart ||
            encode(block.data) != base64Chars(text.substr(bodyStart, bodyEnd - bodyStart)))
            std::abort();
    } catch (const armor::Error &e) {
        checkError(e, size);
    }
    return 0;
}

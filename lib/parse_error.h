// The one error type of pkirelay's parsers (the DER reader and the armour decoder): a reason
// for people, the byte offset it concerns, and whether the input simply ended too early
// (a file still being copied in) rather than being malformed.
#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>

namespace pkirelay {

class ParseError : public std::runtime_error {
public:
    ParseError(std::string reason, std::size_t offset, bool truncated = false)
        : std::runtime_error(reason), reason_(std::move(reason)), offset_(offset),
          truncated_(truncated) {}
    const std::string &reason() const { return reason_; }
    std::size_t offset() const { return offset_; }
    bool truncated() const { return truncated_; }

private:
    std::string reason_;
    std::size_t offset_;
    bool truncated_;
};

} // namespace pkirelay

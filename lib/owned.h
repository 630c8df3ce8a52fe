// Owned<T, Free>: a unique_ptr that frees a C library handle with the library's own function.
// Every sqlite3*, CURL*, EVP_* and CMS_* handle in pkirelay is held by one of these, never bare
// (../shared/STYLE.md, after PowerDNS and Botan).
#pragma once

#include <memory>

namespace pkirelay {

template <auto Free> struct FreeWith {
    template <class T> void operator()(T *p) const noexcept { Free(p); }
};

template <class T, auto Free> using Owned = std::unique_ptr<T, FreeWith<Free>>;

} // namespace pkirelay

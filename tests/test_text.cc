// Unit tests of lib/text.h: credentials never printed, durations parsed strictly, UTF-8 told
// apart from arbitrary bytes.
#include <catch2/catch.hpp>

#include "lib/text.h"

using namespace pkirelay;

TEST_CASE("redactUrl removes user:password@ and nothing else") {
    CHECK(redactUrl("https://user:secret@ca.example:8443/.well-known/cmp") ==
          "https://ca.example:8443/.well-known/cmp");
    CHECK(redactUrl("http://user@127.0.0.1/cmc") == "http://127.0.0.1/cmc");
    // A password with an unescaped '@': the userinfo ends at the last '@' of the authority.
    CHECK(redactUrl("http://u:p@ss@host/x") == "http://host/x");
    // An '@' after the authority is not userinfo.
    CHECK(redactUrl("http://host/path@x?y=a@b") == "http://host/path@x?y=a@b");
    CHECK(redactUrl("http://u:p@host") == "http://host");
    CHECK(redactUrl("http://u:p@host?q") == "http://host?q");
    CHECK(redactUrl("http://host/") == "http://host/");
    CHECK(redactUrl("not a url") == "not a url");
    CHECK(redactUrl("") == "");
}

TEST_CASE("parseDuration takes a positive number and one unit") {
    CHECK(parseDuration("30s") == 30'000);
    CHECK(parseDuration("15m") == 900'000);
    CHECK(parseDuration("12h") == 43'200'000);
    CHECK(parseDuration("7d") == 604'800'000);
    for (const char *bad :
         {"", "s", "7", "0d", "-1d", "1.5h", "1w", "7 d", "d7", "99999999999999999d"})
        CHECK_FALSE(parseDuration(bad).has_value());
}

TEST_CASE("isUtf8 accepts UTF-8 and refuses other bytes") {
    CHECK(isUtf8("plain.p10"));
    CHECK(isUtf8("r\xc3\xa9sum\xc3\xa9.p10")); // résumé
    CHECK(isUtf8("ctrl\x01name"));             // valid UTF-8; only the terminal needs escaping
    CHECK_FALSE(isUtf8("latin1\xe9.p10"));
    CHECK_FALSE(isUtf8("\xc0\xaf"));         // overlong '/'
    CHECK_FALSE(isUtf8("\xed\xa0\x80"));     // a surrogate
    CHECK_FALSE(isUtf8("\xf4\x90\x80\x80")); // above U+10FFFF
    CHECK_FALSE(isUtf8("\xe2\x82"));         // cut short
}

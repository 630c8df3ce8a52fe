// The SMTP responder: the answer to a mailed request goes back as a reply over SMTP(S) with
// libcurl, composed by lib/mail (RFC 5322, CRLF everywhere, threaded with In-Reply-To and
// References, Auto-Submitted: auto-replied, the response attached in the MIME type of its kind).
//
// Exactly one reply per arrival (../shared/DESIGN.md, "The store: what is promised"): plan()
// chooses the reply's Message-ID and the store records it before deliver() sends, so an
// attempt after a failure sends the same reply (same Message-ID), and once the server took it
// (250) the store marks it delivered, at once, reply by reply (repeatable() is false: the
// pipeline marks each send as begun before the hand-over and records it right after). Only a
// stop between the server's 250 and that record can send it a second time, under the same
// Message-ID, which mail clients show as one; the item's history then has a "resend" event.
//
// Envelope: MAIL FROM:<> (the null reverse-path RFC 3834 §4 and RFC 5321 §4.5.5 ask of
// automatic replies, so no bounce of the reply can loop back), RCPT TO the request's Reply-To or
// From (the arrival's replyTo, chosen by the source, which refuses to relay auto-generated mail
// in the first place). A server that is down or answers 4xx: Retry (the pipeline tries again at
// its next sweep; this responder also backs off exponentially while the server stays down). A
// 5xx for the recipient: needs a person (the address will not start working by waiting).
//
// deliver() blocks on the loop's thread for at most the configured timeout per reply; a
// batch of replies shares one connection.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include <curl/curl.h>

#include "lib/owned.h"
#include "lib/responders/responder.h"

namespace pkirelay {

struct SmtpResponderConfig {
    std::string url;      // smtps://host[:port] or smtp://host[:port] (STARTTLS required unless
                          // the host is loopback)
    std::string from;     // the From: of the replies ("pkirelay@example.org")
    std::string user;     // SMTP AUTH login; empty: none
    std::string password; // secret: never logged
    std::string caFile;
    bool verifyTls = true;
    std::int64_t timeoutMs = 30'000;
    std::int64_t backoffInitialMs = 30'000, backoffMaxMs = 3'600'000;
    std::function<std::int64_t()> wallClock; // Unix ms: the reply's Date
};

class SmtpResponder final : public Responder {
public:
    explicit SmtpResponder(SmtpResponderConfig config);
    void plan(std::span<DeliveryTask> tasks, const Reserved &reserved) override;
    std::vector<DeliveryResult> deliver(std::span<const DeliveryTask> tasks) override;
    bool repeatable() const override { return false; }

    // The reply for one task, as it goes on the wire (the golden-file and conformance tests
    // read it).
    std::string compose(const DeliveryTask &task) const;

private:
    SmtpResponderConfig config_;
    std::int64_t backoffMs_ = 0;
    std::int64_t notBefore_ = 0; // monotonic ms: no connection attempt before this
    Owned<CURL, ::curl_easy_cleanup> curl_;
};

} // namespace pkirelay

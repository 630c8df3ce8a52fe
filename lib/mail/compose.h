// Writing mail: the reply to an enrollment mail (RFC 5322, CRLF everywhere, threaded, marked
// auto-replied per RFC 3834) and the response as a bare MIME entity for the on-disk S/MIME form
// (an .eml answered with an .eml, a .p7m with a .p7m). The attachment is in the MIME type of its
// kind with name= and, for CMS, smime-type (RFC 10003 §3; lib/kinds.h), base64 in 76-column
// CRLF lines (RFC 2045 §6.8). Only bytes we chose go into headers: every value from a request
// is stripped of CR, LF and other controls first, so no header can be injected.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "lib/bytes.h"
#include "lib/kinds.h"

namespace pkirelay::mail {

struct ReplySpec {
    std::string from, to, subject, inReplyTo;
    std::string references; // the request's References + its Message-ID
    std::string text;       // the short plain-text part (what happened): replyText()
    Kind kind = Kind::Cmp;
    ByteView response;
    std::string attachmentName; // name= with the kind's extension; empty: kindInfo().mailName
};

// RFC 5322 bytes, CRLF everywhere: Date, Message-ID, MIME-Version, In-Reply-To, References,
// Auto-Submitted: auto-replied, multipart/mixed (text/plain + the response base64 in 76-column
// CRLF lines with the MIME type of its kind and smime-type where it has one). date and
// messageId are given (the caller's clock and id), so a golden file can hold the rest.
std::string composeReply(const ReplySpec &spec, std::string_view date, std::string_view messageId);

// The response as a MIME entity for the on-disk form: MIME-Version, Content-Type of its kind
// with name=, Content-Disposition attachment, base64 body. An .eml request is answered with
// this; a .p7m request with the same entity (it is a valid S/MIME entity on its own).
std::string composeEntity(Kind kind, ByteView response, std::string_view attachmentName = {});

// What happened, for the plain-text part of a reply.
enum class Outcome {
    Issued,   // the CA answered with certificates (or a success status)
    Rejected, // the CA refused; detail is its reason when it gave one
    Waiting,  // pending / waiting: detail says when to try again, when known
    Answered, // some other PKI answer (a CMP error, a genp ...): the attachment says what
};
struct ReplyFacts {
    Outcome outcome = Outcome::Answered;
    std::string detail;     // the CA's reason, or when to try again ("after 2026-12-02 10:00 UTC")
    std::string requestRef; // how the user knows which request (the part's name, a transaction id)
};
std::string replyText(const ReplyFacts &facts);

// RFC 5322 §3.3 date-time for a Unix time, in UTC ("Tue, 01 Dec 2026 23:40:51 +0000").
std::string rfc5322Date(std::int64_t unixSeconds);

// A fresh Message-ID ("<hex.pkirelay@domain>"), random from RAND_bytes.
std::string newMessageId(std::string_view domain);

} // namespace pkirelay::mail

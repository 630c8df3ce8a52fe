// The IMAP source: an enrollment mailbox read over IMAP(S). libcurl makes the connection (TCP,
// TLS for imaps:// or STARTTLS for imap://, with verification, and the login: password or an
// OAuth2 bearer token) and then hands it over (CURLOPT_CONNECT_ONLY); the IMAP commands are
// spoken here over curl_easy_send/recv, because libcurl's IMAP commands cannot fetch with
// BODY.PEEK[] in Debian's 7.88 (a custom FETCH loses the literal), have no IDLE, and hide the
// CAPABILITY answer (../shared/LIBRARIES.md, "libcurl IMAP").
//
// What it promises (../shared/DESIGN.md, "The store: what is promised"):
// - A mail is fetched by UID with BODY.PEEK[] (\Seen is never a marker), classified (lib/mail),
//   and handed over; the mailbox's UIDVALIDITY and the UID are the submission's cursor, which
//   the store commits in the same transaction as the request. After a crash the next run skips
//   what the cursor covers, and a full look finds the mails that were stored but not yet moved
//   (the Ledger says so) and moves them without storing them again.
// - Acknowledging is moving the mail to the processed mailbox (MOVE, RFC 6851, when the server
//   has it; else UID COPY, \Deleted and UID EXPUNGE of those UIDs only, RFC 4315), and only after
//   the store committed it. A mail with several requests is one acknowledgement.
// - A UIDVALIDITY change makes the cursor void: every mail is looked at again and recognised by
//   its Message-ID (or, without one, its content hash) and its bytes, so nothing is lost or
//   relayed twice.
// - A mail that is not to be relayed (no request, auto-generated, a bounce, list traffic, a
//   sender not allowed, over the rate limit, too large) is moved to the rejected mailbox with
//   the reason logged; it is never answered. The rate limit counts in the store: each mail
//   handed over counts against its sender in the transaction that stores it.
// - IDLE (RFC 2177) when the server offers it, on the event loop (the socket is watched; new
//   mail wakes the pipeline), re-issued before 29 minutes, with a NOOP every keepalive period
//   to find a half-open connection; BYE or a drop reconnects with backoff. Without IDLE the
//   pipeline's rescan (run.poll_seconds) polls.
//
// Blocking, bounded: the commands of one take() or acknowledge() (SELECT, SEARCH, FETCH, MOVE)
// wait for their answers on the loop's thread, each bounded by timeoutMs. They are a handful of
// round trips to a server chosen by the operator; IDLE, the only long wait, never blocks.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "lib/mail/mime.h"
#include "lib/sources/source.h"

namespace pkirelay {

struct ImapSourceConfig {
    std::string name;
    std::string url;      // imaps://host[:port]/ or imap://host[:port]/ (STARTTLS required)
    std::string user;     // the login
    std::string password; // secret: never logged
    std::string bearer;   // an OAuth2 bearer token (SASL XOAUTH2) instead of the password
    std::string caFile;   // empty: the system's trust store
    bool verifyTls = true;
    std::string mailbox = "INBOX";
    std::string processedMailbox = "processed";
    std::string rejectedMailbox = "rejected";
    bool idle = true;                       // use IDLE when the server has it
    std::int64_t timeoutMs = 30'000;        // one command's answer
    std::int64_t idleRenewMs = 25 * 60'000; // RFC 2177 §3: before 29 minutes
    std::int64_t keepaliveMs = 4 * 60'000;  // NOOP while idle
    std::int64_t backoffInitialMs = 1'000;  // reconnect after a drop
    std::int64_t backoffMaxMs = 5 * 60'000;
    std::uint64_t maxMessageSize = 4 * 1024 * 1024; // larger mail is rejected unread
    mail::Limits limits;
    mail::SmimeConfig smime;
    // Who may submit: addresses ("ann@example.org") or domains ("example.org"); empty: anyone.
    std::vector<std::string> allowSenders;
    // Most mails relayed per sender per hour; 0: no limit. Counted in the store
    // (Submission::rateSender, Ledger::sentSince), not in the process.
    std::int64_t ratePerHour = 0;
    std::function<std::int64_t()> wallClock; // Unix ms (the rate limit's clock)
};

// How a mail's reply context is written into Arrival::context, and read back by the SMTP
// responder: "Message-ID: ...\nSubject: ...\nReferences: ...\n".
std::string mailContext(const mail::Headers &headers);
struct MailContext {
    std::string messageId, subject, references;
};
MailContext parseMailContext(std::string_view context);

class ImapConnection;

class ImapSource final : public Source {
public:
    explicit ImapSource(ImapSourceConfig config);
    ~ImapSource() override;

    const std::string &name() const override { return config_.name; }
    void attach(EventLoop &loop, std::function<void()> wake) override;
    void detach() override;
    Taken take(Ledger &ledger, std::size_t maxItems, std::size_t maxBytes, bool full) override;
    std::vector<Ack> acknowledge(const std::vector<std::uint64_t> &tokens) override;
    bool available() const override { return available_; }

private:
    bool ensureConnected();
    void dropConnection(const std::string &why);
    void scheduleReconnect();
    void startIdle();
    bool stopIdle();
    void onIdleReadable();
    void armIdleTimers();
    void cancelIdleTimers();
    bool moveTo(const std::vector<std::uint32_t> &uids, const std::string &mailbox);
    std::string rejectWhy(const mail::Extracted &extracted, const std::string &sender,
                          Ledger &ledger, const std::map<std::string, std::int64_t> &counted);

    ImapSourceConfig config_;
    EventLoop *loop_ = nullptr;
    std::function<void()> wake_;
    std::unique_ptr<ImapConnection> conn_;
    bool available_ = true;
    bool idling_ = false;
    bool retryLeftover_ = false; // a new connection: the next take looks at leftover_ too
    std::uint32_t uidValidity_ = 0;
    EventLoop::TimerId reconnectTimer_ = 0, renewTimer_ = 0, keepaliveTimer_ = 0,
                       idleStartTimer_ = 0;
    std::int64_t backoffMs_ = 0;
    std::string lastError_;                          // logged once per distinct error
    std::set<std::uint32_t> leftover_;               // UIDs to look at only in a full take
    std::map<std::uint64_t, std::uint32_t> pending_; // token -> UID, until acknowledged
    std::uint64_t nextToken_ = 1;
};

} // namespace pkirelay

// The IMAP source (imap.h). Trust boundary: the server is the operator's, but every mail in the
// mailbox is hostile: it is bounded in size before it is fetched (RFC822.SIZE) and while it is
// read, and only lib/mail looks inside it. Responses from the server are parsed with bounds too
// (a literal larger than the mail limit ends the connection).
#include "lib/text.h"
#include "lib/sources/imap.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <poll.h>
#include <sys/epoll.h>

#include <curl/curl.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "lib/crash_point.h"
#include "lib/loop/event_loop.h"
#include "lib/owned.h"

namespace pkirelay {

namespace {

using Millis = std::int64_t;

Millis now() {
    return EventLoop::monotonicNow();
}

bool iequalsPrefix(std::string_view text, std::string_view prefix) {
    if (text.size() < prefix.size())
        return false;
    for (std::size_t i = 0; i < prefix.size(); ++i)
        if (std::tolower(static_cast<unsigned char>(text[i])) !=
            std::tolower(static_cast<unsigned char>(prefix[i])))
            return false;
    return true;
}

std::string upper(std::string_view text) {
    std::string out(text);
    for (auto &c : out)
        c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    return out;
}

// The number after `key ` in an IMAP response (case-insensitive), e.g. "UID 42".
std::optional<std::uint64_t> numberAfter(std::string_view line, std::string_view key) {
    const std::string up = upper(line), k = upper(key) + " ";
    for (std::size_t at = up.find(k); at != std::string::npos; at = up.find(k, at + 1)) {
        if (at > 0 && std::isalnum(static_cast<unsigned char>(up[at - 1])) != 0)
            continue; // "XUID" is not "UID"
        const char *begin = line.data() + at + k.size();
        std::uint64_t value = 0;
        auto [end, ec] = std::from_chars(begin, line.data() + line.size(), value);
        if (ec == std::errc() && end != begin)
            return value;
    }
    return std::nullopt;
}

// An IMAP quoted string (RFC 3501 §4.3); mailbox names are checked to be printable ASCII by
// the configuration, so no literal is ever needed.
std::string quoted(std::string_view text) {
    std::string out = "\"";
    for (char c : text) {
        if (c == '"' || c == '\\')
            out += '\\';
        out += c;
    }
    return out + "\"";
}

std::string uidSet(const std::vector<std::uint32_t> &uids) {
    std::string out;
    for (auto uid : uids)
        out += (out.empty() ? "" : ",") + std::to_string(uid);
    return out;
}

std::string oneLine(std::string_view text) {
    std::string out;
    for (char c : text)
        out += (c == '\r' || c == '\n') ? ' ' : c;
    return out;
}

} // namespace

// One authenticated IMAP connection: libcurl connected and logged in (CONNECT_ONLY), and the
// commands are exchanged here with curl_easy_send/recv, which carry TLS.
class ImapConnection {
public:
    struct Response {
        std::string line;                  // literals replaced by a \x01 each
        std::vector<std::string> literals; // in order
    };
    struct Result {
        bool ok = false;     // tagged OK
        bool broken = false; // the connection failed (closed, timed out): drop it
        std::string status;  // the tagged line after the tag, or why it broke
        std::vector<Response> untagged;
    };

    static std::unique_ptr<ImapConnection> open(const ImapSourceConfig &config,
                                                std::string &error) {
        auto conn = std::unique_ptr<ImapConnection>(new ImapConnection(config));
        CURL *c = conn->curl_.get();
        if (!c) {
            error = "curl_easy_init failed";
            return nullptr;
        }
        const bool tls = iequalsPrefix(config.url, "imaps://");
        curl_easy_setopt(c, CURLOPT_URL, config.url.c_str());
        curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "imap,imaps");
        curl_easy_setopt(c, CURLOPT_CONNECT_ONLY, 1L);
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
        curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(config.timeoutMs));
        curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, static_cast<long>(config.timeoutMs));
        curl_easy_setopt(c, CURLOPT_ERRORBUFFER, conn->errbuf_);
        // imap:// must upgrade with STARTTLS or fail: no login ever crosses the wire in clear.
        if (!tls)
            curl_easy_setopt(c, CURLOPT_USE_SSL, static_cast<long>(CURLUSESSL_ALL));
        curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, config.verifyTls ? 1L : 0L);
        curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, config.verifyTls ? 2L : 0L);
        if (!config.caFile.empty())
            curl_easy_setopt(c, CURLOPT_CAINFO, config.caFile.c_str());
        curl_easy_setopt(c, CURLOPT_USERNAME, config.user.c_str());
        if (!config.bearer.empty())
            curl_easy_setopt(c, CURLOPT_XOAUTH2_BEARER, config.bearer.c_str());
        else
            curl_easy_setopt(c, CURLOPT_PASSWORD, config.password.c_str());
        const CURLcode rc = curl_easy_perform(c);
        if (rc != CURLE_OK) {
            // The error buffer names the server and the step, never the secret.
            error = conn->errbuf_[0] != 0 ? conn->errbuf_ : curl_easy_strerror(rc);
            return nullptr;
        }
        curl_socket_t sock = CURL_SOCKET_BAD;
        if (curl_easy_getinfo(c, CURLINFO_ACTIVESOCKET, &sock) != CURLE_OK ||
            sock == CURL_SOCKET_BAD) {
            error = "no socket after connecting";
            return nullptr;
        }
        conn->sock_ = static_cast<int>(sock);
        return conn;
    }

    int socket() const { return sock_; }

    // Sends one tagged command and reads until its tagged answer (bounded by timeoutMs).
    Result command(std::string_view text) {
        Result result;
        const std::string tag = nextTag();
        std::string error;
        if (!sendAll(fmt::format("{} {}\r\n", tag, text), now() + config_.timeoutMs, error)) {
            result.broken = true;
            result.status = error;
            return result;
        }
        return awaitTagged(tag, now() + config_.timeoutMs);
    }

    // IDLE: sends the command; its tag is kept for stopIdle.
    bool sendIdle(std::string &error) {
        idleTag_ = nextTag();
        return sendAll(idleTag_ + " IDLE\r\n", now() + config_.timeoutMs, error);
    }
    // Ends IDLE (DONE) and waits for its tagged answer; untagged lines meanwhile are returned.
    Result endIdle() {
        Result result;
        std::string error;
        if (!sendAll("DONE\r\n", now() + config_.timeoutMs, error)) {
            result.broken = true;
            result.status = error;
            return result;
        }
        return awaitTagged(idleTag_, now() + config_.timeoutMs);
    }

    enum class Read { Got, Nothing, Broken };
    // One complete response if one arrives by deadline (now(): only what is there already).
    Read read(Response &out, Millis deadline, std::string &error) {
        for (;;) {
            if (parse(out, error))
                return Read::Got;
            if (!error.empty())
                return Read::Broken;
            const auto got = fill(deadline, error);
            if (got == Read::Broken)
                return Read::Broken;
            if (got == Read::Nothing)
                return Read::Nothing;
        }
    }

private:
    explicit ImapConnection(const ImapSourceConfig &config)
        : config_(config), curl_(curl_easy_init()) {}

    std::string nextTag() { return fmt::format("P{}", ++tag_); }

    Result awaitTagged(const std::string &tag, Millis deadline) {
        Result result;
        for (;;) {
            Response r;
            std::string error;
            const auto got = read(r, deadline, error);
            if (got != Read::Got) {
                result.broken = true;
                result.status = got == Read::Nothing ? "no answer in time" : error;
                return result;
            }
            if (r.line.starts_with(tag + " ")) {
                result.status = r.line.substr(tag.size() + 1);
                result.ok = iequalsPrefix(result.status, "OK");
                return result;
            }
            if (iequalsPrefix(r.line, "* BYE")) {
                result.broken = true;
                result.status = fmt::format("the server said {}", printable(r.line));
                return result;
            }
            if (r.line.starts_with("*"))
                result.untagged.push_back(std::move(r));
            // "+" continuations (IDLE's "+ idling") need nothing here.
        }
    }

    bool sendAll(std::string_view data, Millis deadline, std::string &error) {
        while (!data.empty()) {
            std::size_t sent = 0;
            const CURLcode rc = curl_easy_send(curl_.get(), data.data(), data.size(), &sent);
            if (rc == CURLE_AGAIN) {
                if (!waitFor(POLLOUT, deadline)) {
                    error = "timed out sending";
                    return false;
                }
                continue;
            }
            if (rc != CURLE_OK) {
                error = curl_easy_strerror(rc);
                return false;
            }
            data.remove_prefix(sent);
        }
        return true;
    }

    bool waitFor(short events, Millis deadline) {
        const Millis left = deadline - now();
        if (left <= 0)
            return false;
        pollfd p{sock_, events, 0};
        return ::poll(&p, 1, static_cast<int>(left)) > 0;
    }

    // Reads what the socket has (waiting until deadline for the first bytes).
    Read fill(Millis deadline, std::string &error) {
        char buf[65536];
        for (;;) {
            std::size_t n = 0;
            // TLS may hold decrypted bytes the socket no longer shows: ask curl first.
            const CURLcode rc = curl_easy_recv(curl_.get(), buf, sizeof buf, &n);
            if (rc == CURLE_AGAIN) {
                if (!waitFor(POLLIN, deadline))
                    return Read::Nothing;
                continue;
            }
            if (rc != CURLE_OK) {
                error = curl_easy_strerror(rc);
                return Read::Broken;
            }
            if (n == 0) {
                error = "the server closed the connection";
                return Read::Broken;
            }
            in_.append(buf, n);
            return Read::Got;
        }
    }

    // One whole response from in_ (a line, and the literals it announces), or false (more bytes
    // needed; error set when the response cannot be one).
    bool parse(Response &out, std::string &error) {
        const std::size_t bound = config_.maxMessageSize + 64 * 1024;
        Response r;
        std::size_t pos = 0;
        for (;;) {
            const auto end = in_.find("\r\n", pos);
            if (end == std::string::npos) {
                if (in_.size() - pos > bound)
                    error = "a response line longer than any mail allowed";
                return false;
            }
            std::string_view seg(in_.data() + pos, end - pos);
            pos = end + 2;
            // RFC 3501 §4.3: a literal is announced as {N} (RFC 7888: {N+}) at the line's end.
            std::uint64_t size = 0;
            bool literal = false;
            if (seg.ends_with("}")) {
                const auto open = seg.rfind('{');
                if (open != std::string_view::npos) {
                    std::string_view digits = seg.substr(open + 1, seg.size() - open - 2);
                    if (digits.ends_with("+"))
                        digits.remove_suffix(1);
                    auto [p, ec] =
                        std::from_chars(digits.data(), digits.data() + digits.size(), size);
                    literal =
                        ec == std::errc() && p == digits.data() + digits.size() && !digits.empty();
                    if (literal)
                        seg = seg.substr(0, open);
                }
            }
            r.line.append(seg);
            if (!literal)
                break;
            if (size > bound) {
                error = fmt::format("a literal of {} bytes is larger than any mail allowed", size);
                return false;
            }
            if (in_.size() - pos < size)
                return false;
            r.literals.emplace_back(in_.substr(pos, size));
            r.line += '\x01';
            pos += size;
        }
        in_.erase(0, pos);
        out = std::move(r);
        return true;
    }

    const ImapSourceConfig &config_;
    Owned<CURL, ::curl_easy_cleanup> curl_;
    char errbuf_[CURL_ERROR_SIZE] = {};
    int sock_ = -1;
    std::string in_;
    int tag_ = 0;
    std::string idleTag_;

public:
    std::set<std::string> caps; // upper case
};

std::string mailContext(const mail::Headers &headers) {
    return fmt::format("Message-ID: {}\nSubject: {}\nReferences: {}\n", oneLine(headers.messageId),
                       oneLine(headers.subject), oneLine(headers.references));
}

MailContext parseMailContext(std::string_view context) {
    MailContext out;
    while (!context.empty()) {
        const auto nl = context.find('\n');
        std::string_view line = context.substr(0, nl);
        context = nl == std::string_view::npos ? std::string_view() : context.substr(nl + 1);
        const auto colon = line.find(": ");
        if (colon == std::string_view::npos)
            continue;
        const auto name = line.substr(0, colon);
        const std::string value(line.substr(colon + 2));
        if (name == "Message-ID")
            out.messageId = value;
        else if (name == "Subject")
            out.subject = value;
        else if (name == "References")
            out.references = value;
    }
    return out;
}

ImapSource::ImapSource(ImapSourceConfig config) : config_(std::move(config)) {
    backoffMs_ = config_.backoffInitialMs;
}

ImapSource::~ImapSource() {
    detach();
}

void ImapSource::attach(EventLoop &loop, std::function<void()> wake) {
    loop_ = &loop;
    wake_ = std::move(wake);
    // Everything is new at start: connect, wait for mail in IDLE, and wake the pipeline (its
    // take() ends the IDLE, and starts it again when done).
    idleStartTimer_ = loop_->after(0, [this] {
        idleStartTimer_ = 0;
        if (ensureConnected())
            startIdle();
        if (wake_)
            wake_();
    });
}

void ImapSource::detach() {
    cancelIdleTimers();
    if (loop_) {
        for (auto id : {reconnectTimer_, idleStartTimer_})
            if (id != 0)
                loop_->cancel(id);
        if (conn_)
            loop_->unwatch(conn_->socket());
    }
    reconnectTimer_ = idleStartTimer_ = 0;
    conn_.reset();
    idling_ = false;
    loop_ = nullptr;
}

bool ImapSource::ensureConnected() {
    if (conn_)
        return true;
    if (reconnectTimer_ != 0)
        return false; // waiting out the backoff
    std::string error;
    auto conn = ImapConnection::open(config_, error);
    auto fail = [&](const std::string &why) {
        if (why != lastError_)
            spdlog::error("- {}: cannot read the mailbox at {}: {}", config_.name, config_.url,
                          printable(why));
        lastError_ = why;
        available_ = false;
        conn_.reset();
        scheduleReconnect();
        return false;
    };
    if (!conn)
        return fail(error);
    conn_ = std::move(conn);
    auto caps = conn_->command("CAPABILITY");
    if (caps.broken || !caps.ok)
        return fail("CAPABILITY: " + caps.status);
    for (const auto &r : caps.untagged)
        if (iequalsPrefix(r.line, "* CAPABILITY ")) {
            std::string_view rest = std::string_view(r.line).substr(13);
            while (!rest.empty()) {
                const auto sp = rest.find(' ');
                conn_->caps.insert(upper(rest.substr(0, sp)));
                rest = sp == std::string_view::npos ? std::string_view() : rest.substr(sp + 1);
            }
        }
    // The mailboxes the mail goes to exist from the start (NO [ALREADYEXISTS] is fine).
    for (const auto *box : {&config_.processedMailbox, &config_.rejectedMailbox}) {
        auto created = conn_->command("CREATE " + quoted(*box));
        if (created.broken)
            return fail("CREATE: " + created.status);
    }
    auto selected = conn_->command("SELECT " + quoted(config_.mailbox));
    if (selected.broken || !selected.ok)
        return fail(fmt::format("SELECT {}: {}", config_.mailbox, selected.status));
    std::uint32_t validity = 0;
    for (const auto &r : selected.untagged)
        if (auto v = numberAfter(r.line, "[UIDVALIDITY"))
            validity = static_cast<std::uint32_t>(*v);
    if (validity == 0)
        return fail(fmt::format("SELECT {} gave no UIDVALIDITY", config_.mailbox));
    if (uidValidity_ != 0 && validity != uidValidity_)
        leftover_.clear();
    uidValidity_ = validity;
    // A move that failed because the connection broke (the server restarted between the
    // fetch and the acknowledgement) is tried again on the new connection, not only at the
    // next full look, which a daemon makes only every run.poll_seconds.
    retryLeftover_ = !leftover_.empty();
    if (!lastError_.empty() || !available_)
        spdlog::info("- {}: connected to {} again", config_.name, config_.url);
    lastError_.clear();
    available_ = true;
    backoffMs_ = config_.backoffInitialMs;
    return true;
}

void ImapSource::dropConnection(const std::string &why) {
    cancelIdleTimers();
    if (conn_ && loop_)
        loop_->unwatch(conn_->socket());
    idling_ = false;
    conn_.reset();
    available_ = false;
    if (why != lastError_)
        spdlog::warn("- {}: connection to {} lost: {}", config_.name, config_.url, printable(why));
    lastError_ = why;
    scheduleReconnect();
}

void ImapSource::scheduleReconnect() {
    if (!loop_ || reconnectTimer_ != 0)
        return;
    const Millis delay = backoffMs_;
    backoffMs_ = std::min(backoffMs_ * 2, config_.backoffMaxMs);
    reconnectTimer_ = loop_->after(delay, [this] {
        reconnectTimer_ = 0;
        // Mail may have come while the connection was down: look (take() connects).
        if (wake_)
            wake_();
    });
}

void ImapSource::cancelIdleTimers() {
    if (!loop_)
        return;
    for (auto *id : {&renewTimer_, &keepaliveTimer_})
        if (*id != 0) {
            loop_->cancel(*id);
            *id = 0;
        }
}

void ImapSource::armIdleTimers() {
    cancelIdleTimers();
    // RFC 2177 §3: the server may drop an IDLE after 30 minutes; re-issue it well before.
    renewTimer_ = loop_->after(config_.idleRenewMs, [this] {
        renewTimer_ = 0;
        if (stopIdle())
            startIdle();
    });
    // A NOOP answered in time proves the connection alive (a half-open one never answers).
    keepaliveTimer_ = loop_->after(config_.keepaliveMs, [this] {
        keepaliveTimer_ = 0;
        if (!stopIdle())
            return;
        auto noop = conn_->command("NOOP");
        if (noop.broken)
            return dropConnection("NOOP: " + noop.status);
        bool exists = false;
        for (const auto &r : noop.untagged)
            exists = exists || upper(r.line).find(" EXISTS") != std::string::npos;
        if (exists && wake_)
            wake_();
        startIdle();
    });
}

void ImapSource::startIdle() {
    idleStartTimer_ = 0;
    if (!loop_ || !conn_ || idling_ || !config_.idle || !conn_->caps.contains("IDLE"))
        return;
    std::string error;
    if (!conn_->sendIdle(error))
        return dropConnection("IDLE: " + error);
    idling_ = true;
    loop_->watch(conn_->socket(), EPOLLIN, [this](std::uint32_t) { onIdleReadable(); });
    armIdleTimers();
}

bool ImapSource::stopIdle() {
    if (!idling_)
        return conn_ != nullptr;
    loop_->unwatch(conn_->socket());
    cancelIdleTimers();
    idling_ = false;
    auto done = conn_->endIdle();
    if (done.broken) {
        dropConnection("ending IDLE: " + done.status);
        return false;
    }
    return true;
}

void ImapSource::onIdleReadable() {
    bool news = false;
    for (;;) {
        ImapConnection::Response r;
        std::string error;
        const auto got = conn_->read(r, now(), error);
        if (got == ImapConnection::Read::Nothing)
            break;
        if (got == ImapConnection::Read::Broken)
            return dropConnection(error);
        if (iequalsPrefix(r.line, "* BYE"))
            return dropConnection(fmt::format("the server said {}", printable(r.line)));
        const std::string up = upper(r.line);
        if (up.find(" EXISTS") != std::string::npos || up.find(" RECENT") != std::string::npos)
            news = true;
        if (!r.line.starts_with("*") && !r.line.starts_with("+")) {
            // The server ended the IDLE itself (a tagged answer): start it again.
            loop_->unwatch(conn_->socket());
            cancelIdleTimers();
            idling_ = false;
            idleStartTimer_ = loop_->after(0, [this] { startIdle(); });
            break;
        }
    }
    if (news && wake_)
        wake_();
}

bool ImapSource::moveTo(const std::vector<std::uint32_t> &uids, const std::string &mailbox) {
    if (uids.empty())
        return true;
    const std::string set = uidSet(uids);
    auto check = [&](const char *what, const ImapConnection::Result &r) {
        if (r.broken) {
            dropConnection(fmt::format("{}: {}", what, r.status));
            return false;
        }
        if (!r.ok)
            spdlog::error("- {}: {} {} to {} refused: {}", config_.name, what, set, mailbox,
                          printable(r.status));
        return r.ok;
    };
    if (conn_->caps.contains("MOVE"))
        return check("UID MOVE",
                     conn_->command(fmt::format("UID MOVE {} {}", set, quoted(mailbox))));
    // RFC 6851's fallback: copy, flag, and expunge exactly these UIDs (RFC 4315 UID EXPUNGE). A
    // plain EXPUNGE would remove every \Deleted mail in the mailbox, not only ours.
    if (!check("UID COPY", conn_->command(fmt::format("UID COPY {} {}", set, quoted(mailbox)))))
        return false;
    if (!check("UID STORE",
               conn_->command(fmt::format("UID STORE {} +FLAGS.SILENT (\\Deleted)", set))))
        return false;
    if (!conn_->caps.contains("UIDPLUS")) {
        spdlog::warn("- {}: the server has neither MOVE nor UIDPLUS: the copied mails stay in {} "
                     "flagged \\Deleted until someone expunges them",
                     config_.name, config_.mailbox);
        return true;
    }
    return check("UID EXPUNGE", conn_->command(fmt::format("UID EXPUNGE {}", set)));
}

std::string ImapSource::rejectWhy(const mail::Extracted &extracted, const std::string &sender,
                                  Ledger &ledger,
                                  const std::map<std::string, std::int64_t> &counted) {
    if (!extracted.headers.autoGenerated.empty())
        return fmt::format("auto-generated mail ({}): never relayed or answered",
                           extracted.headers.autoGenerated);
    if (extracted.requests.empty())
        return extracted.noRequestReason.empty() ? std::string("no PKI request in it")
                                                 : extracted.noRequestReason;
    if (sender.empty())
        return "no address to answer (no From or Reply-To)";
    // RFC 5322 §3.4.1: an addr-spec is local-part "@" domain. A bare word ("From: root") is
    // no address: the SMTP server would deliver the reply to one of its local users.
    if (sender.find('@') == std::string::npos)
        return fmt::format("no address to answer ({} has no domain)", sender);
    if (!config_.allowSenders.empty()) {
        const std::string who = asciiLower(sender);
        const auto at = who.rfind('@');
        const std::string domain = at == std::string::npos ? std::string() : who.substr(at + 1);
        const bool allowed =
            std::any_of(config_.allowSenders.begin(), config_.allowSenders.end(),
                        [&](const std::string &entry) {
                            const std::string e = asciiLower(entry);
                            if (e.find('@') != std::string::npos && !e.starts_with("@"))
                                return e == who;
                            return (e.starts_with("@") ? e.substr(1) : e) == domain;
                        });
        if (!allowed)
            return fmt::format("{} is not on allow_senders", sender);
    }
    if (config_.ratePerHour > 0 && config_.wallClock) {
        // Counted in the store (Submission::rateSender), so the limit holds across runs and
        // restarts; what this take hands over is not stored yet and is added here.
        const std::string who = asciiLower(sender);
        const auto inTake = counted.find(who);
        const std::int64_t sent =
            ledger.sentSince(config_.name, who, config_.wallClock() - kSenderRateWindowMs) +
            (inTake == counted.end() ? 0 : inTake->second);
        if (sent >= config_.ratePerHour)
            return fmt::format("{} sent more than {} request mail(s) in the last hour "
                               "(rate_limit_per_hour)",
                               sender, config_.ratePerHour);
    }
    return {};
}

Taken ImapSource::take(Ledger &ledger, std::size_t maxItems, std::size_t maxBytes, bool full) {
    Taken taken;
    if (idleStartTimer_ != 0 && loop_) {
        loop_->cancel(idleStartTimer_);
        idleStartTimer_ = 0;
    }
    if (!ensureConnected() || !stopIdle()) {
        taken.errors = 1;
        return taken;
    }
    // The cursor: "UIDVALIDITY/UID" of the last mail the store holds. Under another UIDVALIDITY
    // the UIDs mean other mails (RFC 3501 §2.3.1.1): every mail is looked at again and known
    // by its Message-ID (or content hash) and bytes.
    std::uint32_t lastUid = 0;
    {
        const std::string cursor = ledger.cursor(config_.name);
        const auto slash = cursor.find('/');
        std::uint64_t v = 0, u = 0;
        if (slash != std::string::npos) {
            std::from_chars(cursor.data(), cursor.data() + slash, v);
            std::from_chars(cursor.data() + slash + 1, cursor.data() + cursor.size(), u);
        }
        if (v == uidValidity_)
            lastUid = static_cast<std::uint32_t>(u);
        else if (v != 0 && full)
            spdlog::warn("- {}: {} changed UIDVALIDITY from {} to {}: every mail in it is looked "
                         "at again (what is stored already is recognised, not stored twice)",
                         config_.name, config_.mailbox, v, uidValidity_);
    }
    const bool retry = retryLeftover_;
    auto search = conn_->command("UID SEARCH ALL");
    if (search.broken || !search.ok) {
        if (!search.broken)
            spdlog::error("- {}: UID SEARCH refused: {}", config_.name, printable(search.status));
        else
            dropConnection("UID SEARCH: " + search.status);
        taken.errors = 1;
        return taken;
    }
    std::vector<std::uint32_t> candidates;
    for (const auto &r : search.untagged) {
        if (!iequalsPrefix(r.line, "* SEARCH"))
            continue;
        std::string_view rest = std::string_view(r.line).substr(8);
        while (!rest.empty()) {
            while (!rest.empty() && rest.front() == ' ')
                rest.remove_prefix(1);
            std::uint64_t uid = 0;
            auto [p, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), uid);
            if (ec != std::errc())
                break;
            rest.remove_prefix(static_cast<std::size_t>(p - rest.data()));
            // Covered by the cursor (stored, or rejected and not moved) or left over from an
            // acknowledgement that failed: looked at again in a full look, or (the left-over
            // ones) in the first take on a new connection.
            const bool left = leftover_.contains(static_cast<std::uint32_t>(uid));
            if (!full && !(retry && left) && (uid <= lastUid || left))
                continue;
            candidates.push_back(static_cast<std::uint32_t>(uid));
        }
    }
    std::sort(candidates.begin(), candidates.end());
    retryLeftover_ = false;
    if (candidates.size() > maxItems) {
        candidates.resize(maxItems);
        taken.more = true;
    }
    if (candidates.empty()) {
        if (full || retry)
            leftover_.clear(); // none of them is in the mailbox any more
        if (loop_)
            idleStartTimer_ = loop_->after(0, [this] { startIdle(); });
        return taken;
    }

    // Sizes first: a mail over the limit is never fetched.
    std::map<std::uint32_t, std::uint64_t> sizes;
    auto sized = conn_->command(fmt::format("UID FETCH {} (UID RFC822.SIZE)", uidSet(candidates)));
    if (sized.broken) {
        dropConnection("UID FETCH: " + sized.status);
        taken.errors = 1;
        return taken;
    }
    for (const auto &r : sized.untagged)
        if (auto uid = numberAfter(r.line, "UID"))
            if (auto size = numberAfter(r.line, "RFC822.SIZE"))
                sizes[static_cast<std::uint32_t>(*uid)] = *size;

    std::vector<std::pair<std::uint32_t, std::string>> rejects; // uid, why
    std::vector<std::uint32_t> toFetch;
    std::size_t bytes = 0;
    for (auto uid : candidates) {
        const auto size = sizes.find(uid);
        if (size == sizes.end())
            continue; // expunged meanwhile
        if (size->second > config_.maxMessageSize) {
            rejects.emplace_back(uid, fmt::format("{} bytes is larger than the {} allowed",
                                                  size->second, config_.maxMessageSize));
            continue;
        }
        if (!toFetch.empty() && bytes + size->second > maxBytes) {
            taken.more = true;
            break;
        }
        bytes += size->second;
        toFetch.push_back(uid);
    }

    std::map<std::uint32_t, std::string> bodies;
    if (!toFetch.empty()) {
        // A test stops the run here to restart the server under it (PKIRELAY_PAUSE_AT).
        crashPoint("imap-fetch"); // sizes known, the mails not yet fetched
        // BODY.PEEK[]: fetching does not set \Seen (RFC 3501 §6.4.5); nothing depends on it.
        auto fetched =
            conn_->command(fmt::format("UID FETCH {} (UID BODY.PEEK[])", uidSet(toFetch)));
        if (fetched.broken) {
            dropConnection("UID FETCH: " + fetched.status);
            taken.errors = 1;
            return taken;
        }
        for (auto &r : fetched.untagged)
            if (auto uid = numberAfter(r.line, "UID"); uid && !r.literals.empty())
                bodies[static_cast<std::uint32_t>(*uid)] = std::move(r.literals.front());
    }
    // The left-over UIDs looked at now leave the set (what fails again is added back below or
    // by acknowledge()); those the bounds left for later are looked at by the next take.
    if (full || retry) {
        if (!taken.more) {
            leftover_.clear(); // each was a candidate, or is gone from the mailbox
        } else {
            for (auto uid : toFetch)
                leftover_.erase(uid);
            for (const auto &reject : rejects)
                leftover_.erase(reject.first);
            retryLeftover_ = !leftover_.empty();
        }
    }

    std::uint32_t cursorUid = lastUid;
    std::map<std::string, std::int64_t> counted; // sender -> mails handed over in this take
    for (auto uid : toFetch) {
        auto body = bodies.find(uid);
        if (body == bodies.end())
            continue; // expunged meanwhile
        const std::string &raw = body->second;
        const std::string sha = sha256Hex(asBytes(raw));
        const mail::Extracted extracted =
            mail::extract(asBytes(raw), config_.limits, config_.smime);
        const auto &h = extracted.headers;
        const std::string base =
            h.messageId.empty() ? "sha256:" + sha : std::string(printable(h.messageId));
        const std::string sender = mail::addressOf(h.replyTo.empty() ? h.from : h.replyTo);
        std::vector<const mail::FoundRequest *> requests;
        for (const auto &found : extracted.requests)
            if (found.message.isRequest())
                requests.push_back(&found);
        for (const auto &problem : extracted.problems)
            spdlog::info("- {}: mail UID {} ({}): {}", config_.name, uid, printable(base),
                         printable(problem));

        auto originOf = [&](std::size_t i) {
            return i == 0 ? base : fmt::format("{}#{}", base, i + 1);
        };
        // Stored already (a run died before moving it, or UIDVALIDITY changed)?
        bool allStored = !requests.empty();
        std::vector<std::pair<std::uint64_t, std::int64_t>> unacked;
        for (std::size_t i = 0; i < requests.size(); ++i) {
            const auto seen = ledger.arrival(config_.name, originOf(i), sha);
            if (seen.state == Ledger::Seen::State::Unacknowledged)
                unacked.emplace_back(0, seen.deliveryId);
            else
                allStored = false;
        }
        if (allStored) {
            for (auto &[token, delivery] : unacked) {
                token = nextToken_++;
                pending_[token] = uid;
                taken.unacknowledged.emplace_back(token, delivery);
            }
            continue;
        }
        std::string why = rejectWhy(extracted, sender, ledger, counted);
        if (why.empty() && requests.empty())
            why = "it holds a PKI message, but no request";
        if (!why.empty()) {
            rejects.emplace_back(uid, fmt::format("{} from {}: {}", printable(base),
                                                  sender.empty() ? "(no sender)" : sender, why));
            continue;
        }
        const bool rated = config_.ratePerHour > 0 && config_.wallClock;
        if (rated)
            ++counted[asciiLower(sender)];
        cursorUid = std::max(cursorUid, uid);
        for (std::size_t i = 0; i < requests.size(); ++i) {
            Submission sub;
            sub.arrival = {config_.name, originOf(i), sender, mailContext(h)};
            sub.arrivalSha256 = sha;
            sub.size = raw.size();
            sub.message = requests[i]->message;
            sub.cursor = fmt::format("{}/{}", uidValidity_, cursorUid);
            if (rated && i == 0)
                sub.rateSender = asciiLower(sender); // one mail, one count
            const std::uint64_t token = nextToken_++;
            pending_[token] = uid;
            taken.submissions.push_back(std::move(sub));
            taken.tokens.push_back(token);
        }
    }

    // Not relayed, never answered: moved aside, the reason in the log.
    if (!rejects.empty()) {
        std::vector<std::uint32_t> uids;
        for (const auto &[uid, why] : rejects) {
            spdlog::warn("- {}: mail UID {} moved to {}: {}", config_.name, uid,
                         config_.rejectedMailbox, printable(why));
            uids.push_back(uid);
        }
        if (!conn_ || !moveTo(uids, config_.rejectedMailbox)) {
            for (auto uid : uids)
                leftover_.insert(uid);
            ++taken.errors;
        }
    }
    if (loop_ && conn_)
        idleStartTimer_ = loop_->after(0, [this] { startIdle(); });
    return taken;
}

std::vector<Source::Ack> ImapSource::acknowledge(const std::vector<std::uint64_t> &tokens) {
    std::vector<Ack> acks(tokens.size(), Ack::Failed);
    std::vector<std::uint32_t> uids;
    for (auto token : tokens)
        if (auto it = pending_.find(token); it != pending_.end())
            uids.push_back(it->second);
    std::sort(uids.begin(), uids.end());
    uids.erase(std::unique(uids.begin(), uids.end()), uids.end());
    if (idleStartTimer_ != 0 && loop_) {
        loop_->cancel(idleStartTimer_);
        idleStartTimer_ = 0;
    }
    // A connection lost since take() came back under the same UIDVALIDITY, or the UIDs are
    // void: then the next full look finds the mails and acknowledges them.
    const std::uint32_t validity = uidValidity_;
    const bool ok = !uids.empty() && ensureConnected() && uidValidity_ == validity && stopIdle() &&
                    moveTo(uids, config_.processedMailbox);
    for (std::size_t i = 0; i < tokens.size(); ++i) {
        auto it = pending_.find(tokens[i]);
        if (it == pending_.end())
            continue;
        if (ok)
            acks[i] = Ack::Removed;
        else
            leftover_.insert(it->second);
        pending_.erase(it);
    }
    if (loop_ && conn_)
        idleStartTimer_ = loop_->after(0, [this] { startIdle(); });
    return acks;
}

} // namespace pkirelay

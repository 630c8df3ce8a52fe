// The SMTP responder (smtp.h). What it sends is composed by lib/mail from the store's bytes and
// the request's recorded headers; what it trusts: the configured server. Secrets go to curl
// only, never into a log line (curl's error buffer does not hold them).
#include "lib/responders/smtp.h"

#include <algorithm>
#include <cstring>

#include <sys/socket.h>

#include <curl/curl.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "lib/classify.h"
#include "lib/loop/event_loop.h"
#include "lib/mail/compose.h"
#include "lib/mail/mime.h"
#include "lib/owned.h"
#include "lib/sources/imap.h"

namespace pkirelay {

namespace {

struct Upload {
    std::string_view data;
};

size_t readBody(char *buffer, size_t size, size_t count, void *userdata) {
    auto *up = static_cast<Upload *>(userdata);
    const size_t n = std::min(size * count, up->data.size());
    std::memcpy(buffer, up->data.data(), n);
    up->data.remove_prefix(n);
    return n;
}

// What the CA said, for the reply's text: from the response's classified status.
mail::ReplyFacts factsOf(Kind kind, ByteView response) {
    mail::ReplyFacts facts;
    const auto classified = classify(response);
    const Message *m = std::get_if<Message>(&classified);
    if (kind == Kind::CmcSimpleResponse) {
        facts.outcome = mail::Outcome::Issued; // certs-only: the certificates themselves
        return facts;
    }
    if (!m)
        return facts;
    if (m->cmp) {
        const int body = m->cmp->bodyType;
        const auto status = m->cmp->pkiStatus;
        // RFC 9810 §5.2.3 PKIStatus: 0 accepted, 1 grantedWithMods, 2 rejection, 3 waiting.
        if (body == 23 || (status && *status == 2))
            facts.outcome = mail::Outcome::Rejected;
        else if (body == 26 || (status && *status == 3))
            facts.outcome = mail::Outcome::Waiting;
        else if (status && (*status == 0 || *status == 1))
            facts.outcome = mail::Outcome::Issued;
        return facts;
    }
    if (m->cmc && m->cmc->status) {
        // RFC 10002 §6.1.1 CMCStatus: 0 success, 2 failed, 3 pending, 4 noSupport, 5
        // confirmRequired.
        switch (*m->cmc->status) {
        case 0:
            facts.outcome = mail::Outcome::Issued;
            break;
        case 2:
        case 4:
            facts.outcome = mail::Outcome::Rejected;
            break;
        case 3:
            facts.outcome = mail::Outcome::Waiting;
            break;
        default:
            break;
        }
    }
    return facts;
}

std::string domainOf(std::string_view address) {
    const auto at = address.rfind('@');
    return at == std::string_view::npos ? std::string("pkirelay.invalid")
                                        : std::string(address.substr(at + 1));
}

} // namespace

SmtpResponder::SmtpResponder(SmtpResponderConfig config) : config_(std::move(config)) {
    backoffMs_ = config_.backoffInitialMs;
}

void SmtpResponder::plan(std::span<DeliveryTask> tasks, const Reserved &reserved) {
    // The output is the reply's Message-ID: recorded before the reply is sent, so every later
    // attempt sends the very same reply.
    for (auto &task : tasks) {
        if (!task.output.empty())
            continue;
        if (task.arrival.replyTo.empty()) {
            task.waitReason = "no address to reply to";
            continue;
        }
        for (int i = 0; i < 3 && task.output.empty(); ++i) {
            std::string id = mail::newMessageId(domainOf(config_.from));
            if (!reserved(task.arrival.replyTo, id))
                task.output = std::move(id);
        }
    }
}

std::string SmtpResponder::compose(const DeliveryTask &task) const {
    const MailContext ctx = parseMailContext(task.arrival.context);
    mail::ReplySpec spec;
    spec.from = config_.from;
    spec.to = task.arrival.replyTo;
    const bool hasRe = ctx.subject.size() >= 3 && (ctx.subject.compare(0, 3, "Re:") == 0 ||
                                                   ctx.subject.compare(0, 3, "RE:") == 0);
    spec.subject = ctx.subject.empty() ? "Your enrollment request"
                                       : (hasRe ? ctx.subject : "Re: " + ctx.subject);
    const bool realId = !ctx.messageId.empty();
    spec.inReplyTo = realId ? ctx.messageId : "";
    spec.references = ctx.references.empty()
                          ? spec.inReplyTo
                          : (realId ? ctx.references + " " + ctx.messageId : ctx.references);
    auto facts = factsOf(task.kind, task.response);
    // Several requests in one mail are answered one reply each; the origin's "#N" says which.
    if (const auto hash = task.arrival.origin.rfind('#'); hash != std::string::npos)
        facts.requestRef =
            fmt::format("(request {} of the mail)", task.arrival.origin.substr(hash + 1));
    spec.text = mail::replyText(facts);
    spec.kind = task.kind;
    spec.response = task.response;
    const std::int64_t nowMs = config_.wallClock ? config_.wallClock() : 0;
    return mail::composeReply(spec, mail::rfc5322Date(nowMs / 1000), task.output);
}

std::vector<DeliveryResult> SmtpResponder::deliver(std::span<const DeliveryTask> tasks) {
    std::vector<DeliveryResult> results(tasks.size());
    if (EventLoop::monotonicNow() < notBefore_) {
        for (auto &r : results)
            r = {DeliveryResult::Type::Retry, fmt::format("{} was not reachable a moment ago; "
                                                          "trying again later",
                                                          config_.url)};
        return results;
    }
    // One handle kept between replies and batches: curl keeps the SMTP connection open (RFC
    // 5321 allows many transactions per session), until a send leaves the session's state
    // unknown (below).
    char errbuf[CURL_ERROR_SIZE] = {};
    bool serverDown = false;
    for (std::size_t i = 0; i < tasks.size(); ++i) {
        const auto &task = tasks[i];
        if (serverDown) {
            results[i] = {DeliveryResult::Type::Retry, "the SMTP server is not reachable"};
            continue;
        }
        if (!curl_)
            curl_.reset(curl_easy_init());
        CURL *c = curl_.get();
        const std::string message = compose(task);
        Upload up{message};
        curl_slist *rcpt = curl_slist_append(nullptr, task.arrival.replyTo.c_str());
        Owned<curl_slist, ::curl_slist_free_all> rcptOwner(rcpt);
        curl_easy_reset(c);
        errbuf[0] = 0;
        curl_easy_setopt(c, CURLOPT_URL, config_.url.c_str());
        curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "smtp,smtps");
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
        curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(config_.timeoutMs));
        curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, static_cast<long>(config_.timeoutMs));
        // smtp:// upgrades with STARTTLS when the server offers it, and must when a login is
        // sent; smtps:// is TLS from the first byte.
        curl_easy_setopt(c, CURLOPT_USE_SSL,
                         static_cast<long>(config_.user.empty() ? CURLUSESSL_TRY : CURLUSESSL_ALL));
        curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, config_.verifyTls ? 1L : 0L);
        curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, config_.verifyTls ? 2L : 0L);
        if (!config_.caFile.empty())
            curl_easy_setopt(c, CURLOPT_CAINFO, config_.caFile.c_str());
        if (!config_.user.empty()) {
            curl_easy_setopt(c, CURLOPT_USERNAME, config_.user.c_str());
            curl_easy_setopt(c, CURLOPT_PASSWORD, config_.password.c_str());
        }
        curl_easy_setopt(c, CURLOPT_MAIL_FROM, "<>");
        curl_easy_setopt(c, CURLOPT_MAIL_RCPT, rcpt);
        curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
        curl_easy_setopt(c, CURLOPT_READFUNCTION, readBody);
        curl_easy_setopt(c, CURLOPT_READDATA, &up);
        curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(message.size()));
        const CURLcode rc = curl_easy_perform(c);
        long code = 0;
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
        const std::string why = errbuf[0] != 0 ? errbuf : curl_easy_strerror(rc);
        if (rc == CURLE_OK) {
            const std::string what =
                fmt::format("reply {} sent to {}", task.output, task.arrival.replyTo);
            results[i] = {DeliveryResult::Type::Delivered, what, what};
            continue;
        }
        // RFC 5321 §4.2.1: 5yz is permanent (this address will not work by waiting), 4yz and
        // no answer at all are transient (Postfix's bounce/defer split).
        if (code >= 500 && code < 600) {
            results[i] = {DeliveryResult::Type::NeedsPerson,
                          fmt::format("{} refused the reply to {} ({}): {}", config_.url,
                                      task.arrival.replyTo, code, why)};
            continue;
        }
        results[i] = {DeliveryResult::Type::Retry,
                      fmt::format("sending the reply to {} via {}: {}", task.arrival.replyTo,
                                  config_.url, why)};
        // The whole message went out and no refusal came back (the connection dropped or timed
        // out waiting for the answer to the final dot): the server may have taken it.
        results[i].uncertain = up.data.empty() && code < 400;
        if (results[i].uncertain || rc == CURLE_OPERATION_TIMEDOUT) {
            // Where the server is in this session is unknown (its late answer would be read as
            // the next command's), and curl keeps the connection: at the handle's cleanup it
            // would send QUIT and wait for it (120 s of a server that does not answer). The
            // connection is cut first, so the QUIT fails at once; the next reply connects anew.
            curl_socket_t sock = CURL_SOCKET_BAD;
            if (curl_easy_getinfo(c, CURLINFO_ACTIVESOCKET, &sock) == CURLE_OK &&
                sock != CURL_SOCKET_BAD)
                ::shutdown(sock, SHUT_RDWR);
            curl_.reset();
        }
        if (code == 0) {
            serverDown = true;
            curl_.reset(); // a fresh connection next time
            notBefore_ = EventLoop::monotonicNow() + backoffMs_;
            backoffMs_ = std::min(backoffMs_ * 2, config_.backoffMaxMs);
        }
    }
    if (!serverDown)
        backoffMs_ = config_.backoffInitialMs;
    return results;
}

} // namespace pkirelay

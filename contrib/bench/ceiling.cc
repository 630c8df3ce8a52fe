// The two ceilings the benchmark measures pkirelay against, with nothing of pkirelay in them.
//   ceiling net DIR URL-PREFIX [IN-FLIGHT]
//       reads every request file of DIR into memory, then POSTs each once with libcurl's multi
//       interface, IN-FLIGHT (default 32) at a time on kept-alive connections, to URL-PREFIX/cmp,
//       /cmc or /p10 by the file's extension, and counts the 200 answers: the network ceiling.
//   ceiling files IN OUT RESPONSE-DIR
//       for each request in IN: read it, write the fixed answer of its kind (rsp_KIND.der from
//       RESPONSE-DIR) to OUT under a temporary name, rename it, unlink the request; one syncfs
//       at the end: the file-system ceiling, the least a relay that writes files must do.
// Both print "COUNT SECONDS FAILED" on stdout. Built by run.sh with g++ -O2; not installed.
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <curl/curl.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bench_util.h"
#include "lib/owned.h"

namespace {

using bench::die;
using bench::Fd;
using bench::slurp;
using pkirelay::Owned;
using CurlEasy = Owned<CURL, ::curl_easy_cleanup>;
using CurlMulti = Owned<CURLM, ::curl_multi_cleanup>;
using CurlList = Owned<curl_slist, ::curl_slist_free_all>;
using Dir = Owned<DIR, ::closedir>;

std::string kindOf(const std::string &name) {
    auto dot = name.rfind('.');
    std::string ext = dot == std::string::npos ? "" : name.substr(dot);
    if (ext == ".der" || ext == ".pki")
        return "cmp";
    if (ext == ".crq")
        return "cmc";
    if (ext == ".p10")
        return "p10";
    return "";
}

// Content-Type per kind: RFC 9811 §3 for CMP, RFC 10003 §4 for CMC.
const char *contentType(const std::string &kind) {
    if (kind == "cmp")
        return "Content-Type: application/pkixcmp";
    if (kind == "cmc")
        return "Content-Type: application/pkcs7-mime; smime-type=CMC-Request";
    return "Content-Type: application/pkcs10";
}

std::vector<std::string> listRequests(const std::string &dir) {
    Dir d(::opendir(dir.c_str()));
    if (!d)
        die("opendir " + dir);
    std::vector<std::string> names;
    while (dirent *e = ::readdir(d.get())) {
        std::string n = e->d_name;
        if (n[0] != '.' && !kindOf(n).empty())
            names.push_back(n);
    }
    return names;
}

double secondsSince(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

size_t discard(char *, size_t size, size_t n, void *counter) {
    *static_cast<size_t *>(counter) += size * n;
    return size * n;
}

int net(const std::string &dir, const std::string &prefix, int inFlight) {
    struct Body {
        std::string bytes, kind;
    };
    std::vector<Body> bodies;
    for (const auto &n : listRequests(dir))
        bodies.push_back({slurp(dir + "/" + n), kindOf(n)});

    struct Slot {
        CurlEasy easy;
        CurlList headers;
        size_t received = 0;
    };
    CurlMulti multi(::curl_multi_init());
    std::vector<Slot> slots(static_cast<size_t>(inFlight));
    size_t next = 0, done = 0, failed = 0;
    auto start = [&](Slot &s) {
        const Body &b = bodies[next++];
        if (!s.easy)
            s.easy.reset(::curl_easy_init());
        s.headers.reset(::curl_slist_append(nullptr, contentType(b.kind)));
        s.received = 0;
        CURL *e = s.easy.get();
        std::string url = prefix + "/" + b.kind;
        ::curl_easy_setopt(e, CURLOPT_URL, url.c_str());
        ::curl_easy_setopt(e, CURLOPT_POSTFIELDS, b.bytes.data());
        ::curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(b.bytes.size()));
        ::curl_easy_setopt(e, CURLOPT_HTTPHEADER, s.headers.get());
        ::curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, discard);
        ::curl_easy_setopt(e, CURLOPT_WRITEDATA, &s.received);
        ::curl_easy_setopt(e, CURLOPT_PRIVATE, &s);
        ::curl_multi_add_handle(multi.get(), e);
    };

    auto t0 = std::chrono::steady_clock::now();
    for (auto &s : slots)
        if (next < bodies.size())
            start(s);
    int running = 1;
    while (done < bodies.size()) {
        ::curl_multi_perform(multi.get(), &running);
        int left = 0;
        while (CURLMsg *m = ::curl_multi_info_read(multi.get(), &left)) {
            if (m->msg != CURLMSG_DONE)
                continue;
            Slot *s = nullptr;
            ::curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, reinterpret_cast<char **>(&s));
            long status = 0;
            ::curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &status);
            if (m->data.result != CURLE_OK || status != 200 || s->received == 0)
                ++failed;
            ::curl_multi_remove_handle(multi.get(), m->easy_handle);
            ++done;
            if (next < bodies.size())
                start(*s); // the same easy handle, so its connection is kept alive and reused
        }
        if (done < bodies.size())
            ::curl_multi_poll(multi.get(), nullptr, 0, 1000, nullptr);
    }
    std::printf("%zu %.6f %zu\n", done, secondsSince(t0), failed);
    return failed == 0 ? 0 : 1;
}

int files(const std::string &in, const std::string &out, const std::string &rspDir) {
    std::string answers[3] = {slurp(rspDir + "/rsp_cmp.der"), slurp(rspDir + "/rsp_cmc.der"),
                              slurp(rspDir + "/rsp_p10.der")};
    const char *exts[3] = {".pki", ".crp", ".p7c"};
    auto t0 = std::chrono::steady_clock::now();
    Fd inDir(::open(in.c_str(), O_RDONLY | O_DIRECTORY));
    Fd outDir(::open(out.c_str(), O_RDONLY | O_DIRECTORY));
    if (inDir.fd < 0 || outDir.fd < 0)
        die("open " + in + " or " + out);
    std::vector<char> buf(1 << 20);
    size_t done = 0, failed = 0;
    for (const auto &n : listRequests(in)) {
        std::string kind = kindOf(n);
        int k = kind == "cmp" ? 0 : kind == "cmc" ? 1 : 2;
        {
            Fd f(::openat(inDir.fd, n.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
            if (f.fd < 0 || ::read(f.fd, buf.data(), buf.size()) <= 0) {
                ++failed;
                continue;
            }
        }
        std::string stem = n.substr(0, n.rfind('.'));
        std::string tmp = "." + stem + ".tmp", final = stem + exts[k];
        {
            Fd f(::openat(outDir.fd, tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640));
            if (f.fd < 0 || ::write(f.fd, answers[k].data(), answers[k].size()) !=
                                static_cast<ssize_t>(answers[k].size())) {
                ++failed;
                continue;
            }
        }
        if (::renameat(outDir.fd, tmp.c_str(), outDir.fd, final.c_str()) != 0 ||
            ::unlinkat(inDir.fd, n.c_str(), 0) != 0) {
            ++failed;
            continue;
        }
        ++done;
    }
    if (::syncfs(outDir.fd) != 0)
        die("syncfs");
    std::printf("%zu %.6f %zu\n", done, secondsSince(t0), failed);
    return failed == 0 ? 0 : 1;
}

} // namespace

int main(int argc, char **argv) {
    std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "net" && (argc == 4 || argc == 5)) {
        ::curl_global_init(CURL_GLOBAL_DEFAULT);
        return net(argv[2], argv[3], argc == 5 ? std::atoi(argv[4]) : 32);
    }
    if (mode == "files" && argc == 5)
        return files(argv[2], argv[3], argv[4]);
    std::fprintf(stderr, "usage: ceiling net DIR URL-PREFIX [IN-FLIGHT]\n"
                         "       ceiling files IN OUT RESPONSE-DIR\n");
    return 64;
}

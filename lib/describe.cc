// placeholder: being written
#include "describe.h"
namespace pkirelay {
std::string describe(const Message &) { return {}; }
std::string describe(const Rejection &r) { return r.reason; }
nlohmann::json toJson(const Message &) { return {}; }
nlohmann::json toJson(const Rejection &r) { return {{"reason", r.reason}}; }
}

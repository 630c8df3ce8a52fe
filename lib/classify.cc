// placeholder: being written
#include "classify.h"
namespace pkirelay {
Classification classify(ByteView, const ClassifyLimits &) { return Rejection{"classifier not built yet", {}, false}; }
bool Message::isRequest() const { return true; }
std::string_view cmpBodyName(int) { return "unknown"; }
bool cmpBodyIsRequest(int) { return true; }
}

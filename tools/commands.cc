#include "tools/commands.h"

#include <iostream>

namespace tessera::tools {

int Fail(const std::string& command, const absl::Status& status) {
  std::cerr << "tessera " << command << ": " << status.message() << "\n";
  return 1;
}

}  // namespace tessera::tools

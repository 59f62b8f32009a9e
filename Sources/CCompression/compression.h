/* zstd and lz4 from Debian's libzstd-dev and liblz4-dev (scripts/setup.sh installs them). */
#include <zstd.h>
#include <lz4.h>

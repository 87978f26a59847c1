// libcrypt (libxcrypt on Debian): crypt_r verifies htpasswd bcrypt ($2y$/$2b$) entries.
#include <crypt.h>

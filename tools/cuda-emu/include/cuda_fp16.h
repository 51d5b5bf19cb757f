#include "emu_kernel.h"

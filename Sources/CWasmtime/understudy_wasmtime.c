#include "understudy_wasmtime.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#ifndef UNDERSTUDY_WASMTIME_DEFAULT
#define UNDERSTUDY_WASMTIME_DEFAULT ""
#endif

static struct understudy_wasmtime_api api;
static const struct understudy_wasmtime_api *loaded;
static pthread_mutex_t loading = PTHREAD_MUTEX_INITIALIZER;

const char *understudy_wasmtime_default_path(void) { return UNDERSTUDY_WASMTIME_DEFAULT; }

const struct understudy_wasmtime_api *understudy_wasmtime_load(const char *path, char *reason, size_t reason_size) {
    pthread_mutex_lock(&loading);
    if (loaded) {
        pthread_mutex_unlock(&loading);
        return loaded;
    }
    void *library = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!library) {
        snprintf(reason, reason_size, "%s", dlerror());
        pthread_mutex_unlock(&loading);
        return NULL;
    }
#define RESOLVE(name)                                                                     \
    do {                                                                                  \
        *(void **)(&api.name) = dlsym(library, #name);                                    \
        if (!api.name) {                                                                  \
            snprintf(reason, reason_size, "%s has no %s (not wasmtime 50?)", path, #name); \
            dlclose(library);                                                             \
            pthread_mutex_unlock(&loading);                                               \
            return NULL;                                                                  \
        }                                                                                 \
    } while (0)
    RESOLVE(wasm_config_new);
    RESOLVE(wasmtime_config_memory_may_move_set);
    RESOLVE(wasmtime_config_memory_reservation_set);
    RESOLVE(wasmtime_config_memory_guard_size_set);
    RESOLVE(wasmtime_config_memory_init_cow_set);
    RESOLVE(wasmtime_config_cranelift_nan_canonicalization_set);
    RESOLVE(wasmtime_config_max_wasm_stack_set);
    RESOLVE(wasmtime_config_consume_fuel_set);
    RESOLVE(wasm_engine_new_with_config);
    RESOLVE(wasmtime_module_new);
    RESOLVE(wasmtime_module_serialize);
    RESOLVE(wasmtime_module_deserialize_file);
    RESOLVE(wasmtime_module_delete);
    RESOLVE(wasm_byte_vec_delete);
    RESOLVE(wasmtime_store_new);
    RESOLVE(wasmtime_store_context);
    RESOLVE(wasmtime_store_limiter);
    RESOLVE(wasmtime_store_delete);
    RESOLVE(wasmtime_context_set_fuel);
    RESOLVE(wasmtime_context_get_fuel);
    RESOLVE(wasmtime_linker_new);
    RESOLVE(wasmtime_linker_define_func_unchecked);
    RESOLVE(wasmtime_linker_instantiate);
    RESOLVE(wasmtime_linker_delete);
    RESOLVE(wasm_valtype_new);
    RESOLVE(wasm_valtype_vec_new);
    RESOLVE(wasm_valtype_vec_new_empty);
    RESOLVE(wasm_functype_new);
    RESOLVE(wasm_functype_delete);
    RESOLVE(wasmtime_instance_export_get);
    RESOLVE(wasmtime_instance_export_nth);
    RESOLVE(wasmtime_extern_delete);
    RESOLVE(wasmtime_func_call);
    RESOLVE(wasmtime_memory_data);
    RESOLVE(wasmtime_memory_data_size);
    RESOLVE(wasmtime_memory_grow);
    RESOLVE(wasmtime_global_get);
    RESOLVE(wasmtime_global_set);
    RESOLVE(wasmtime_error_message);
    RESOLVE(wasmtime_error_delete);
    RESOLVE(wasm_trap_message);
    RESOLVE(wasm_trap_delete);
    RESOLVE(wasmtime_trap_new);
#undef RESOLVE
    loaded = &api;
    pthread_mutex_unlock(&loading);
    return loaded;
}

// The sizes `_bindings.py` gives (ctypes lays structures out as C does).
_Static_assert(sizeof(wasmtime_val_t) == 32, "wasmtime_val_t");
_Static_assert(sizeof(wasmtime_val_raw_t) == 16, "wasmtime_val_raw_t");
_Static_assert(sizeof(wasmtime_extern_t) == 32, "wasmtime_extern_t");
_Static_assert(sizeof(wasmtime_memory_t) == 24, "wasmtime_memory_t");
_Static_assert(sizeof(wasmtime_global_t) == 24, "wasmtime_global_t");
_Static_assert(sizeof(wasmtime_func_t) == 16, "wasmtime_func_t");
_Static_assert(sizeof(wasmtime_instance_t) == 16, "wasmtime_instance_t");

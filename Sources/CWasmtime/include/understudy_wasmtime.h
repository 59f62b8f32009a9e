// The part of wasmtime's C API (50.0.1) the wasmtime engine uses, declared here because PyPI's
// wheel ships `_libwasmtime.so` without headers. Layouts mirror the wheel's `_bindings.py`; the
// library is opened at run time (`understudy_wasmtime_load`), so a build without it still has the
// WasmKit engine.
#ifndef UNDERSTUDY_WASMTIME_H
#define UNDERSTUDY_WASMTIME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

// Only the table's own pointers are marked (non-null, so Swift calls them directly); the
// functions' pointers keep C's meaning.
#pragma clang diagnostic ignored "-Wnullability-completeness"

typedef struct wasm_config_t wasm_config_t;
typedef struct wasm_engine_t wasm_engine_t;
typedef struct wasmtime_module wasmtime_module_t;
typedef struct wasmtime_store wasmtime_store_t;
typedef struct wasmtime_context wasmtime_context_t;
typedef struct wasmtime_linker wasmtime_linker_t;
typedef struct wasmtime_caller wasmtime_caller_t;
typedef struct wasmtime_error wasmtime_error_t;
typedef struct wasm_trap_t wasm_trap_t;
typedef struct wasm_valtype_t wasm_valtype_t;
typedef struct wasm_functype_t wasm_functype_t;

typedef struct wasm_byte_vec_t {
    size_t size;
    uint8_t *data;
} wasm_byte_vec_t;

typedef struct wasm_valtype_vec_t {
    size_t size;
    wasm_valtype_t **data;
} wasm_valtype_vec_t;

enum { UNDERSTUDY_WASM_I32 = 0, UNDERSTUDY_WASM_I64 = 1, UNDERSTUDY_WASM_F32 = 2, UNDERSTUDY_WASM_F64 = 3 };
enum { UNDERSTUDY_WASMTIME_EXTERN_FUNC = 0, UNDERSTUDY_WASMTIME_EXTERN_GLOBAL = 1, UNDERSTUDY_WASMTIME_EXTERN_MEMORY = 3 };

typedef struct wasmtime_func {
    uint64_t store_id;
    void *private_;
} wasmtime_func_t;

typedef struct wasmtime_indexed {
    uint64_t store_id;
    uint32_t private1;
} wasmtime_indexed_t;

typedef struct wasmtime_memory {
    wasmtime_indexed_t anon;
    uint32_t private2;
} wasmtime_memory_t;

typedef struct wasmtime_table {
    wasmtime_indexed_t anon;
    uint32_t private2;
} wasmtime_table_t;

typedef struct wasmtime_tag {
    wasmtime_indexed_t anon;
    uint32_t private2;
} wasmtime_tag_t;

typedef struct wasmtime_global {
    uint64_t store_id;
    uint32_t private1;
    uint32_t private2;
    uint32_t private3;
} wasmtime_global_t;

typedef struct wasmtime_instance {
    uint64_t store_id;
    size_t private_;
} wasmtime_instance_t;

typedef struct wasmtime_extern {
    uint8_t kind;
    union {
        wasmtime_func_t func;
        wasmtime_global_t global;
        wasmtime_table_t table;
        wasmtime_memory_t memory;
        void *sharedmemory;
        wasmtime_tag_t tag;
    } of;
} wasmtime_extern_t;

typedef struct wasmtime_gc_ref {
    uint64_t store_id;
    uint32_t private1;
    uint32_t private2;
    void *private3;
} wasmtime_gc_ref_t;

typedef struct wasmtime_val {
    uint8_t kind;
    union {
        int32_t i32;
        int64_t i64;
        float f32;
        double f64;
        wasmtime_gc_ref_t anyref;
        wasmtime_gc_ref_t externref;
        wasmtime_gc_ref_t exnref;
        wasmtime_func_t funcref;
        uint8_t v128[16];
    } of;
} wasmtime_val_t;

typedef union wasmtime_val_raw {
    int32_t i32;
    int64_t i64;
    float f32;
    double f64;
    uint8_t v128[16];
    uint32_t anyref;
    uint32_t externref;
    uint32_t exnref;
    void *funcref;
} wasmtime_val_raw_t;

typedef wasm_trap_t *(*_Nonnull wasmtime_func_unchecked_callback_t)(
    void *env, wasmtime_caller_t *caller, wasmtime_val_raw_t *args_and_results, size_t count);

/// Every function used, resolved from the library by name.
struct understudy_wasmtime_api {
    wasm_config_t *(*_Nonnull wasm_config_new)(void);
    void (*_Nonnull wasmtime_config_memory_may_move_set)(wasm_config_t *, bool);
    void (*_Nonnull wasmtime_config_memory_reservation_set)(wasm_config_t *, uint64_t);
    void (*_Nonnull wasmtime_config_memory_guard_size_set)(wasm_config_t *, uint64_t);
    void (*_Nonnull wasmtime_config_memory_init_cow_set)(wasm_config_t *, bool);
    void (*_Nonnull wasmtime_config_cranelift_nan_canonicalization_set)(wasm_config_t *, bool);
    void (*_Nonnull wasmtime_config_max_wasm_stack_set)(wasm_config_t *, size_t);
    void (*_Nonnull wasmtime_config_consume_fuel_set)(wasm_config_t *, bool);
    wasm_engine_t *(*_Nonnull wasm_engine_new_with_config)(wasm_config_t *);

    wasmtime_error_t *(*_Nonnull wasmtime_module_new)(wasm_engine_t *, const uint8_t *, size_t, wasmtime_module_t **);
    wasmtime_error_t *(*_Nonnull wasmtime_module_serialize)(wasmtime_module_t *, wasm_byte_vec_t *);
    wasmtime_error_t *(*_Nonnull wasmtime_module_deserialize_file)(wasm_engine_t *, const char *, wasmtime_module_t **);
    void (*_Nonnull wasmtime_module_delete)(wasmtime_module_t *);
    void (*_Nonnull wasm_byte_vec_delete)(wasm_byte_vec_t *);

    wasmtime_store_t *(*_Nonnull wasmtime_store_new)(wasm_engine_t *, void *, void (*)(void *));
    wasmtime_context_t *(*_Nonnull wasmtime_store_context)(wasmtime_store_t *);
    void (*_Nonnull wasmtime_store_limiter)(wasmtime_store_t *, int64_t, int64_t, int64_t, int64_t, int64_t);
    void (*_Nonnull wasmtime_store_delete)(wasmtime_store_t *);
    wasmtime_error_t *(*_Nonnull wasmtime_context_set_fuel)(wasmtime_context_t *, uint64_t);
    wasmtime_error_t *(*_Nonnull wasmtime_context_get_fuel)(const wasmtime_context_t *, uint64_t *);

    wasmtime_linker_t *(*_Nonnull wasmtime_linker_new)(wasm_engine_t *);
    wasmtime_error_t *(*_Nonnull wasmtime_linker_define_func_unchecked)(
        wasmtime_linker_t *, const char *, size_t, const char *, size_t, const wasm_functype_t *,
        wasmtime_func_unchecked_callback_t, void *, void (*)(void *));
    wasmtime_error_t *(*_Nonnull wasmtime_linker_instantiate)(
        const wasmtime_linker_t *, wasmtime_context_t *, const wasmtime_module_t *, wasmtime_instance_t *, wasm_trap_t **);
    void (*_Nonnull wasmtime_linker_delete)(wasmtime_linker_t *);

    wasm_valtype_t *(*_Nonnull wasm_valtype_new)(uint8_t);
    void (*_Nonnull wasm_valtype_vec_new)(wasm_valtype_vec_t *, size_t, wasm_valtype_t *const *);
    void (*_Nonnull wasm_valtype_vec_new_empty)(wasm_valtype_vec_t *);
    wasm_functype_t *(*_Nonnull wasm_functype_new)(wasm_valtype_vec_t *, wasm_valtype_vec_t *);
    void (*_Nonnull wasm_functype_delete)(wasm_functype_t *);

    bool (*_Nonnull wasmtime_instance_export_get)(wasmtime_context_t *, const wasmtime_instance_t *, const char *, size_t, wasmtime_extern_t *);
    bool (*_Nonnull wasmtime_instance_export_nth)(
        wasmtime_context_t *, const wasmtime_instance_t *, size_t, char **, size_t *, wasmtime_extern_t *);
    void (*_Nonnull wasmtime_extern_delete)(wasmtime_extern_t *);

    wasmtime_error_t *(*_Nonnull wasmtime_func_call)(
        wasmtime_context_t *, const wasmtime_func_t *, const wasmtime_val_t *, size_t, wasmtime_val_t *, size_t, wasm_trap_t **);

    uint8_t *(*_Nonnull wasmtime_memory_data)(const wasmtime_context_t *, const wasmtime_memory_t *);
    size_t (*_Nonnull wasmtime_memory_data_size)(const wasmtime_context_t *, const wasmtime_memory_t *);
    wasmtime_error_t *(*_Nonnull wasmtime_memory_grow)(wasmtime_context_t *, const wasmtime_memory_t *, uint64_t, uint64_t *);

    void (*_Nonnull wasmtime_global_get)(wasmtime_context_t *, const wasmtime_global_t *, wasmtime_val_t *);
    wasmtime_error_t *(*_Nonnull wasmtime_global_set)(wasmtime_context_t *, const wasmtime_global_t *, const wasmtime_val_t *);

    void (*_Nonnull wasmtime_error_message)(const wasmtime_error_t *, wasm_byte_vec_t *);
    void (*_Nonnull wasmtime_error_delete)(wasmtime_error_t *);
    void (*_Nonnull wasm_trap_message)(const wasm_trap_t *, wasm_byte_vec_t *);
    void (*_Nonnull wasm_trap_delete)(wasm_trap_t *);
    wasm_trap_t *(*_Nonnull wasmtime_trap_new)(const char *, size_t);
};

/// Opens the library at `path` and resolves every function. Returns NULL and writes a one-line
/// reason into `reason` when it cannot. Thread-safe; the first success is kept for the process.
const struct understudy_wasmtime_api *understudy_wasmtime_load(const char *path, char *reason, size_t reason_size);

/// The library path baked in at build time (the project's `.build-python`), or "".
const char *understudy_wasmtime_default_path(void);

#endif

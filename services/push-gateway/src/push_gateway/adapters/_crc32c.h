/* CRC-32C (Castagnoli), as Kafka's record batch v2 uses it: the SSE 4.2 instruction where
   the CPU has it (checked once at run time), a slice-by-8 table elsewhere. */
#ifndef SLOT_CRC32C_H
#define SLOT_CRC32C_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

static uint32_t slot_crc32c_table[8][256];
static int slot_crc32c_ready = 0;

static void slot_crc32c_init(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t crc = n;
        for (int k = 0; k < 8; k++) crc = crc & 1 ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
        slot_crc32c_table[0][n] = crc;
    }
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t crc = slot_crc32c_table[0][n];
        for (int k = 1; k < 8; k++) {
            crc = slot_crc32c_table[0][crc & 0xff] ^ (crc >> 8);
            slot_crc32c_table[k][n] = crc;
        }
    }
    slot_crc32c_ready = 1;
}

static uint32_t slot_crc32c_sw(uint32_t crc, const uint8_t *p, size_t n) {
    if (!slot_crc32c_ready) slot_crc32c_init();
    while (n && ((uintptr_t)p & 7)) {
        crc = slot_crc32c_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
        n--;
    }
    while (n >= 8) {
        uint32_t lo, hi;
        memcpy(&lo, p, 4);
        memcpy(&hi, p + 4, 4);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        lo = __builtin_bswap32(lo);
        hi = __builtin_bswap32(hi);
#endif
        lo ^= crc;
        crc = slot_crc32c_table[7][lo & 0xff] ^ slot_crc32c_table[6][(lo >> 8) & 0xff] ^
              slot_crc32c_table[5][(lo >> 16) & 0xff] ^ slot_crc32c_table[4][lo >> 24] ^
              slot_crc32c_table[3][hi & 0xff] ^ slot_crc32c_table[2][(hi >> 8) & 0xff] ^
              slot_crc32c_table[1][(hi >> 16) & 0xff] ^ slot_crc32c_table[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n--) crc = slot_crc32c_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return crc;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <nmmintrin.h>
#define SLOT_CRC32C_HW 1

__attribute__((target("sse4.2"))) static uint32_t slot_crc32c_hw(uint32_t crc, const uint8_t *p,
                                                                 size_t n) {
    uint64_t c = crc;
    while (n && ((uintptr_t)p & 7)) {
        c = _mm_crc32_u8((uint32_t)c, *p++);
        n--;
    }
    while (n >= 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        c = _mm_crc32_u64(c, word);
        p += 8;
        n -= 8;
    }
    while (n--) c = _mm_crc32_u8((uint32_t)c, *p++);
    return (uint32_t)c;
}
#endif

/* -1: not asked yet; 0: table; 1: SSE 4.2 */
static int slot_crc32c_mode = -1;

static uint32_t slot_crc32c(const uint8_t *p, size_t n) {
#ifdef SLOT_CRC32C_HW
    if (slot_crc32c_mode < 0) {
        __builtin_cpu_init();
        slot_crc32c_mode = __builtin_cpu_supports("sse4.2") ? 1 : 0;
    }
    if (slot_crc32c_mode == 1) return slot_crc32c_hw(0xFFFFFFFFu, p, n) ^ 0xFFFFFFFFu;
#endif
    return slot_crc32c_sw(0xFFFFFFFFu, p, n) ^ 0xFFFFFFFFu;
}

/* The table version whatever the CPU: lets the tests compare both on the same bytes. */
static uint32_t slot_crc32c_table_only(const uint8_t *p, size_t n) {
    return slot_crc32c_sw(0xFFFFFFFFu, p, n) ^ 0xFFFFFFFFu;
}

#endif

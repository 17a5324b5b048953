/*
 * Every VMA of a process as (vm_start, vm_flags), read by a BPF task_vma
 * iterator (src/proc/vmflags-bpf.ts): what the restore's self-check reads
 * /proc/PID/smaps for, without the text. The kernel formats ~25 lines per
 * area for smaps (7 MB for 10 000 areas: 35-40 ms of its CPU here); the
 * iterator hands over 16 bytes per area (~1.7 ms for the same process).
 *
 * The program is fourteen instructions written out below (no libbpf, no
 * clang): it loads ctx->vma, stores vm_start and vm_flags on its stack and
 * bpf_seq_write()s them. Where those fields are, and the BTF id of the
 * iterator's attach point, come from the running kernel's BTF
 * (/sys/kernel/btf/vmlinux), so nothing here depends on one kernel's
 * struct layout. Which vm_flags bit is which smaps token is not assumed
 * either: vmflags-bpf.ts learns it by comparing both reads of areas it
 * made with each token.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define BTF_KIND_INT 1
#define BTF_KIND_ARRAY 3
#define BTF_KIND_STRUCT 4
#define BTF_KIND_UNION 5
#define BTF_KIND_ENUM 6
#define BTF_KIND_TYPEDEF 8
#define BTF_KIND_VOLATILE 9
#define BTF_KIND_CONST 10
#define BTF_KIND_RESTRICT 11
#define BTF_KIND_FUNC 12
#define BTF_KIND_FUNC_PROTO 13
#define BTF_KIND_VAR 14
#define BTF_KIND_DATASEC 15
#define BTF_KIND_DECL_TAG 17
#define BTF_KIND_TYPE_TAG 18
#define BTF_KIND_ENUM64 19

#define BPF_PROG_LOAD 5
#define BPF_LINK_CREATE 28
#define BPF_ITER_CREATE 33
#define BPF_PROG_TYPE_TRACING 26
#define BPF_TRACE_ITER 28
#define BPF_FUNC_seq_write 127

/* Answers that are not -errno. */
#define VMAITER_NO_BTF -200000   /* BTF unreadable or without the iterator / the fields */
#define VMAITER_FULL -200001     /* more areas than the caller made room for */

struct btf_header {
  uint16_t magic;
  uint8_t version, flags;
  uint32_t hdr_len, type_off, type_len, str_off, str_len;
};

struct btf {
  const uint8_t *data;
  size_t len;
  const char *strs;
  uint32_t str_len;
  uint32_t *at; /* byte offset of type id i's record */
  uint32_t count;
};

static uint32_t u32at(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }

/* Bytes after a type's 12-byte record, by kind; -1 for a kind not known (a newer BTF: give up). */
static long extra(uint32_t kind, uint32_t vlen) {
  switch (kind) {
  case BTF_KIND_INT: case BTF_KIND_VAR: case BTF_KIND_DECL_TAG: return 4;
  case BTF_KIND_ARRAY: return 12;
  case BTF_KIND_STRUCT: case BTF_KIND_UNION: case BTF_KIND_DATASEC: case BTF_KIND_ENUM64: return 12L * vlen;
  case BTF_KIND_ENUM: case BTF_KIND_FUNC_PROTO: return 8L * vlen;
  case 2: case 7: case BTF_KIND_TYPEDEF: case BTF_KIND_VOLATILE: case BTF_KIND_CONST: case BTF_KIND_RESTRICT:
  case BTF_KIND_FUNC: case 16: case BTF_KIND_TYPE_TAG: return 0;
  default: return -1;
  }
}

static int btf_index(struct btf *b) {
  if (b->len < sizeof(struct btf_header)) return -1;
  struct btf_header h;
  memcpy(&h, b->data, sizeof h);
  if (h.magic != 0xeB9F || (uint64_t)h.hdr_len + h.type_off + h.type_len > b->len || (uint64_t)h.hdr_len + h.str_off + h.str_len > b->len) return -1;
  const uint8_t *t = b->data + h.hdr_len + h.type_off, *end = t + h.type_len;
  b->strs = (const char *)b->data + h.hdr_len + h.str_off;
  b->str_len = h.str_len;
  /* A record is at least 12 bytes: type_len / 12 + 1 ids bound the table. */
  b->at = malloc(sizeof(uint32_t) * (h.type_len / 12 + 2));
  if (!b->at) return -1;
  b->count = 1;
  b->at[0] = 0;
  while (t + 12 <= end) {
    uint32_t info = u32at(t + 4);
    long more = extra((info >> 24) & 0x1f, info & 0xffff);
    if (more < 0) return -1;
    b->at[b->count++] = (uint32_t)(t - b->data);
    t += 12 + more;
  }
  return t == end ? 0 : -1;
}

static const char *name_of(const struct btf *b, uint32_t off) { return off < b->str_len ? b->strs + off : ""; }

static long find_type(const struct btf *b, uint32_t kind, const char *name) {
  for (uint32_t i = 1; i < b->count; i++) {
    const uint8_t *r = b->data + b->at[i];
    if (((u32at(r + 4) >> 24) & 0x1f) == kind && strcmp(name_of(b, u32at(r)), name) == 0) return i;
  }
  return -1;
}

/* Byte offset of member `name` of struct/union `id`, looking into anonymous members; -1 if absent or a bitfield. */
static long member_offset(const struct btf *b, uint32_t id, const char *name, int depth) {
  if (depth > 8 || id == 0 || id >= b->count) return -1;
  const uint8_t *r = b->data + b->at[id];
  uint32_t info = u32at(r + 4), vlen = info & 0xffff, kflag = info >> 31;
  const uint8_t *m = r + 12;
  for (uint32_t i = 0; i < vlen; i++, m += 12) {
    uint32_t off = u32at(m + 8), bits = kflag ? (off & 0xffffff) : off;
    if (kflag && (off >> 24) != 0) continue;
    if (bits % 8) continue;
    uint32_t mname = u32at(m);
    if (mname != 0) {
      if (strcmp(name_of(b, mname), name) == 0) return bits / 8;
      continue;
    }
    uint32_t t = u32at(m + 4);
    for (int hops = 0; hops < 8 && t > 0 && t < b->count; hops++) {
      const uint8_t *tr = b->data + b->at[t];
      uint32_t k = (u32at(tr + 4) >> 24) & 0x1f;
      if (k == BTF_KIND_TYPEDEF || k == BTF_KIND_VOLATILE || k == BTF_KIND_CONST || k == BTF_KIND_RESTRICT || k == BTF_KIND_TYPE_TAG) { t = u32at(tr + 8); continue; }
      if (k == BTF_KIND_STRUCT || k == BTF_KIND_UNION) {
        long inner = member_offset(b, t, name, depth + 1);
        if (inner >= 0) return bits / 8 + inner;
      }
      break;
    }
  }
  return -1;
}

static long sys_bpf(int cmd, void *attr, unsigned size) {
  long r = syscall(SYS_bpf, cmd, attr, size);
  return r < 0 ? -errno : r;
}

static uint64_t insn(uint8_t code, uint8_t dst, uint8_t src, int16_t off, int32_t imm) {
  return (uint64_t)code | ((uint64_t)(uint8_t)(dst | (src << 4)) << 8) | ((uint64_t)(uint16_t)off << 16) | ((uint64_t)(uint32_t)imm << 32);
}

/*
 * Loads the iterator program: its fd (close-on-exec, as every bpf fd), or
 * -errno (EPERM without CAP_BPF/CAP_SYS_ADMIN, EINVAL from the verifier),
 * or VMAITER_NO_BTF. `log`: the verifier's words on a refusal (loglen bytes).
 */
long tsnap_vmaiter_load(char *log, uint32_t loglen) {
  int fd = open("/sys/kernel/btf/vmlinux", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return VMAITER_NO_BTF;
  struct stat st;
  if (fstat(fd, &st) < 0 || st.st_size <= 0) { close(fd); return VMAITER_NO_BTF; }
  /* sysfs reports the blob's size; read until EOF in case it grew. */
  size_t cap = (size_t)st.st_size + 4096, len = 0;
  uint8_t *data = malloc(cap);
  if (!data) { close(fd); return -ENOMEM; }
  for (;;) {
    ssize_t n = read(fd, data + len, cap - len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    len += (size_t)n;
    if (len == cap) break;
  }
  close(fd);
  struct btf b = { .data = data, .len = len };
  long ret = VMAITER_NO_BTF;
  long fn, vma, start_off, flags_off;
  if (btf_index(&b) < 0) goto out;
  fn = find_type(&b, BTF_KIND_FUNC, "bpf_iter_task_vma");
  vma = find_type(&b, BTF_KIND_STRUCT, "vm_area_struct");
  if (fn < 0 || vma < 0) goto out;
  start_off = member_offset(&b, (uint32_t)vma, "vm_start", 0);
  flags_off = member_offset(&b, (uint32_t)vma, "vm_flags", 0);
  if (start_off < 0 || flags_off < 0 || start_off > 32000 || flags_off > 32000) goto out;
  {
    /* ctx: struct bpf_iter__task_vma { meta; task; vma; }, 8 bytes each. */
    uint64_t prog[] = {
      insn(0x79, 6, 1, 0, 0),                  /* r6 = ctx->meta */
      insn(0x79, 7, 1, 16, 0),                 /* r7 = ctx->vma */
      insn(0x15, 7, 0, 9, 0),                  /* if r7 == 0 goto out */
      insn(0x79, 2, 7, (int16_t)start_off, 0), /* r2 = vma->vm_start */
      insn(0x7b, 10, 2, -16, 0),               /* stack[-16] = r2 */
      insn(0x79, 3, 7, (int16_t)flags_off, 0), /* r3 = vma->vm_flags */
      insn(0x7b, 10, 3, -8, 0),                /* stack[-8] = r3 */
      insn(0x79, 1, 6, 0, 0),                  /* r1 = meta->seq */
      insn(0xbf, 2, 10, 0, 0),                 /* r2 = fp */
      insn(0x07, 2, 0, 0, -16),                /* r2 -= 16 */
      insn(0xb7, 3, 0, 0, 16),                 /* r3 = 16 */
      insn(0x85, 0, 0, 0, BPF_FUNC_seq_write), /* bpf_seq_write(seq, fp - 16, 16) */
      insn(0xb7, 0, 0, 0, 0),                  /* out: r0 = 0 */
      insn(0x95, 0, 0, 0, 0),                  /* exit */
    };
    uint8_t attr[128];
    memset(attr, 0, sizeof attr);
    uint32_t type = BPF_PROG_TYPE_TRACING, n = sizeof prog / sizeof prog[0], attach = BPF_TRACE_ITER, btf_id = (uint32_t)fn, level = log && loglen ? 1 : 0;
    uint64_t insns = (uint64_t)(uintptr_t)prog, license = (uint64_t)(uintptr_t)"GPL", logp = (uint64_t)(uintptr_t)log;
    memcpy(attr + 0, &type, 4);
    memcpy(attr + 4, &n, 4);
    memcpy(attr + 8, &insns, 8);
    memcpy(attr + 16, &license, 8);
    memcpy(attr + 24, &level, 4);
    if (level) { memcpy(attr + 28, &loglen, 4); memcpy(attr + 32, &logp, 8); }
    memcpy(attr + 48, "tsnap_vmaflags", 15);
    memcpy(attr + 68, &attach, 4);
    memcpy(attr + 108, &btf_id, 4);
    ret = sys_bpf(BPF_PROG_LOAD, attr, sizeof attr);
  }
out:
  free(b.at);
  free(data);
  return ret;
}

/*
 * The VMAs of process `pid` by program `prog`: `out` gets two u64 per area
 * (vm_start, vm_flags) in address order, at most `max` areas. The count,
 * -errno (ESRCH: no such process), or VMAITER_FULL.
 */
long tsnap_vmaiter_read(int prog, int pid, uint64_t *out, size_t max) {
  uint8_t attr[64];
  /* bpf_iter_link_info.task: tid, pid, pid_fd. By pid: by tid this kernel (6.18) went on into
   * other processes' areas. By pid the iterator walks the leader, then a thread only if its
   * file table is its own: the same areas again, from the lowest; the caller keeps the first
   * ascending run (vmflags-bpf.ts). */
  uint32_t info[4] = { 0, (uint32_t)pid, 0, 0 };
  memset(attr, 0, sizeof attr);
  uint32_t attach = BPF_TRACE_ITER, ilen = sizeof info;
  uint64_t ip = (uint64_t)(uintptr_t)info;
  memcpy(attr + 0, &prog, 4);
  memcpy(attr + 8, &attach, 4);
  memcpy(attr + 16, &ip, 8);
  memcpy(attr + 24, &ilen, 4);
  long link = sys_bpf(BPF_LINK_CREATE, attr, sizeof attr);
  if (link < 0) return link;
  memset(attr, 0, sizeof attr);
  uint32_t lfd = (uint32_t)link;
  memcpy(attr, &lfd, 4);
  long it = sys_bpf(BPF_ITER_CREATE, attr, sizeof attr);
  if (it < 0) { close((int)link); return it; }
  size_t cap = max * 16, got = 0;
  long ret = 0;
  for (;;) {
    if (got == cap) {
      /* Full: one more byte tells a table that fits exactly from one that does not. */
      uint8_t probe[16];
      ssize_t n = read((int)it, probe, sizeof probe);
      if (n < 0 && errno == EINTR) continue;
      ret = n == 0 ? (long)(got / 16) : n < 0 ? -errno : VMAITER_FULL;
      break;
    }
    ssize_t n = read((int)it, (uint8_t *)out + got, cap - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) { ret = -errno; break; }
    if (n == 0) { ret = got % 16 ? -EIO : (long)(got / 16); break; }
    got += (size_t)n;
  }
  close((int)it);
  close((int)link);
  return ret;
}

#include <sys/mman.h>

#define MADV_SEQUENTIAL_ 2
#define MADV_RANDOM_ 1
#define MADV_DONTFORK_ 10
#define MADV_DONTDUMP_ 16
#define MADV_MERGEABLE_ 12
#define MADV_HUGEPAGE_ 14
#define MADV_NOHUGEPAGE_ 15
#define MADV_WIPEONFORK_ 18
#define MAP_DROPPABLE_ 0x08
#define MLOCK_ONFAULT_ 1

/*
 * One page per VmFlags token in the caller's own address space, for
 * vmflags-bpf.ts to learn which vm_flags bit smaps prints as which token.
 * addrs[i] (n = 14): 0 plain, 1 sr, 2 rr, 3 dc, 4 dd, 5 mg, 6 hg, 7 nh,
 * 8 wf, 9 lo, 10 lf, 11 nr, 12 dp, 13 without mw (shared, read-only
 * /dev/zero); 0 where this kernel refused (that token is then not learnt).
 * Each probe is mapped on its own between two unmapped pages, so that it
 * merges with no neighbour. tsnap_vmaiter_unprobe() unmaps them.
 */
long tsnap_vmaiter_probes(uint64_t *addrs, uint32_t n) {
  if (n < 14) return -EINVAL;
  static const int advice[] = { 0, MADV_SEQUENTIAL_, MADV_RANDOM_, MADV_DONTFORK_, MADV_DONTDUMP_, MADV_MERGEABLE_, MADV_HUGEPAGE_, MADV_NOHUGEPAGE_, MADV_WIPEONFORK_ };
  long page = sysconf(_SC_PAGESIZE);
  for (uint32_t i = 0; i < 14; i++) {
    addrs[i] = 0;
    /* Three pages reserved, the middle one kept: nothing can sit right beside it. */
    uint8_t *hole = mmap(NULL, 3 * page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (hole == MAP_FAILED) return -errno;
    uint8_t *want = hole + page;
    int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED;
    if (i == 11) flags |= MAP_NORESERVE;
    if (i == 12) flags = MAP_DROPPABLE_ | MAP_ANONYMOUS | MAP_FIXED;
    void *p;
    if (i == 13) {
      int fd = open("/dev/zero", O_RDONLY | O_CLOEXEC);
      p = fd < 0 ? MAP_FAILED : mmap(want, page, PROT_READ, MAP_SHARED | MAP_FIXED, fd, 0);
      if (fd >= 0) close(fd);
    } else {
      p = mmap(want, page, PROT_READ | PROT_WRITE, flags, -1, 0);
    }
    munmap(hole, page);
    munmap(hole + 2 * page, page);
    if (p == MAP_FAILED) { munmap(want, page); continue; }
    int ok = 0;
    if (i >= 1 && i <= 8) ok = madvise(p, page, advice[i]);
    else if (i == 9) ok = (int)syscall(SYS_mlock2, p, page, 0);
    else if (i == 10) ok = (int)syscall(SYS_mlock2, p, page, MLOCK_ONFAULT_);
    if (ok != 0) { munmap(p, page); continue; }
    addrs[i] = (uint64_t)(uintptr_t)p;
  }
  return 14;
}

void tsnap_vmaiter_unprobe(const uint64_t *addrs, uint32_t n) {
  long page = sysconf(_SC_PAGESIZE);
  for (uint32_t i = 0; i < n; i++) if (addrs[i]) munmap((void *)(uintptr_t)addrs[i], page);
}

/**
 * The kernel side of the one-copy dump's splices, in C, without tsnap
 * (docs/performance.md, "Two pages files"): 1 GiB of a process's own memory
 * vmspliced into 16 pipes of 1 MiB per step and spliced into files of the
 * image's filesystem (BENCH_DIR, default /dev/shm):
 *   files   1 thread into 1 file; 2 threads into 1 file at disjoint
 *           offsets; 2 threads into 2 files (wall, CPU, and each thread's
 *           splice CPU / wall / time asleep: a thread waiting on the file's
 *           inode lock either sleeps or spins, which shows as CPU)
 *   crc     the CRC read-back (pread of 256 KiB pieces + tsnap_crc32) of
 *           the whole file after the copy, against each MiB right after
 *           its splice (still in the CPU's caches)
 * BENCH_RT=1 runs them in the real-time class (chrt -f 10), so that other
 * work on shared cores stays out of the wall; REPS (BENCH_REPS, default 4)
 * after a warm-up. Standalone: node dist/bench/splice-files.js
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const SIZE_MIB = Number(process.env.BENCH_MIB ?? 1024);
const REPS = Number(process.env.BENCH_REPS ?? 4);
const OUT_ROOT = process.env.BENCH_DIR ?? '/dev/shm';
const RT = process.env.BENCH_RT === '1';
const CRC_LIB = fileURLToPath(new URL('../native/libtsnap-crc32.so', import.meta.url));

const FILES = `#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>
#include <pthread.h>
#include <time.h>
#include <sys/mman.h>
#include <sys/uio.h>
#define MIB (1<<20)
static size_t N; static char *mem; static int nthreads, samefile; static int files[8];
static double now(clockid_t c){struct timespec t;clock_gettime(c,&t);return t.tv_sec+t.tv_nsec/1e9;}
struct arg{int id; double cpu, spl, splw, rq, w;};
static void ss(double*run,double*wait){FILE*f=fopen("/proc/thread-self/schedstat","r");unsigned long long a,b;fscanf(f,"%llu %llu",&a,&b);fclose(f);*run=a/1e9;*wait=b/1e9;}
static void *run(void *p){ struct arg *a=p; int np=16; int pr[16][2];
  for(int i=0;i<np;i++){pipe2(pr[i],O_NONBLOCK); fcntl(pr[i][1],F_SETPIPE_SZ,MIB);}
  double c0=now(CLOCK_THREAD_CPUTIME_ID); double s=0; double r0,q0,r1,q1,w0=now(CLOCK_MONOTONIC); ss(&r0,&q0);
  size_t per=N/nthreads; size_t base=a->id*per;
  int fd=files[samefile?0:a->id];
  for(size_t off=0; off<per; off+=np*(size_t)MIB){
    for(int i=0;i<np;i++){struct iovec v={mem+base+off+i*(size_t)MIB,MIB}; if(vmsplice(pr[i][1],&v,1,SPLICE_F_NONBLOCK)!=MIB){perror("vmsplice");exit(1);}}
    double t0=now(CLOCK_THREAD_CPUTIME_ID), tw=now(CLOCK_MONOTONIC);
    for(int i=0;i<np;i++){ loff_t o=(samefile?base:0)+off+i*(size_t)MIB; size_t left=MIB; while(left){ssize_t r=splice(pr[i][0],NULL,fd,&o,left,0); if(r<=0){perror("splice");exit(1);} left-=r;}}
    s+=now(CLOCK_THREAD_CPUTIME_ID)-t0; a->splw+=now(CLOCK_MONOTONIC)-tw;
  }
  a->cpu=now(CLOCK_THREAD_CPUTIME_ID)-c0; ss(&r1,&q1); a->rq=q1-q0; a->w=now(CLOCK_MONOTONIC)-w0; a->spl=s; return 0;}
int main(int argc,char**argv){ N=(size_t)atol(argv[1])*MIB; int reps=atoi(argv[2]);
  mem=mmap(0,N,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0);
  for(size_t i=0;i<N/8;i++)((uint64_t*)mem)[i]=i*0x9E3779B97F4A7C15ull;
  const char *modes[]={"1t1f","2t1f","2t2f"};
  for(int r=0;r<reps;r++) for(int m=0;m<3;m++){
    nthreads=m==0?1:2; samefile=m==1;
    for(int i=0;i<2;i++){char nm[64];sprintf(nm,"%s/tsnap-bench-par-%d",getenv("OUT"),i); files[i]=open(nm,O_RDWR|O_CREAT|O_TRUNC,0600);}
    pthread_t th[2]; struct arg a[2]={{0},{1}};
    double w0=now(CLOCK_MONOTONIC), p0=now(CLOCK_PROCESS_CPUTIME_ID);
    for(int i=0;i<nthreads;i++)pthread_create(&th[i],0,run,&a[i]);
    for(int i=0;i<nthreads;i++)pthread_join(th[i],0);
    double w=now(CLOCK_MONOTONIC)-w0, p=now(CLOCK_PROCESS_CPUTIME_ID)-p0;
    for(int i=0;i<2;i++){char nm[64];sprintf(nm,"%s/tsnap-bench-par-%d",getenv("OUT"),i); close(files[i]); unlink(nm);}
    if(r>0) printf("%s wall %.0f ms cpu %.0f ms splice-cpu %.0f+%.0f splice-wall %.0f+%.0f sleep %.0f+%.0f\\n",modes[m],w*1e3,p*1e3,a[0].spl*1e3,a[1].spl*1e3,a[0].splw*1e3,a[1].splw*1e3,(a[0].w-a[0].cpu-a[0].rq)*1e3,(a[1].w-a[1].cpu-a[1].rq)*1e3);
    fflush(stdout);
  }
}
`;

const CRC = `#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <fcntl.h>
#include <unistd.h>
#include <time.h>
#include <sys/mman.h>
#include <sys/uio.h>
#define MIB (1<<20)
uint32_t tsnap_crc32(uint32_t crc, const void *p, size_t n);
static double now(clockid_t c){struct timespec t;clock_gettime(c,&t);return t.tv_sec+t.tv_nsec/1e9;}
int main(int argc,char**argv){ char path[512]; snprintf(path,sizeof path,"%s/tsnap-bench-hot",getenv("OUT")); size_t N=(size_t)atol(argv[1])*MIB; int reps=atoi(argv[2]);
  char *mem=mmap(0,N,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0);
  for(size_t i=0;i<N/8;i++)((uint64_t*)mem)[i]=i*0x9E3779B97F4A7C15ull;
  int pr[16][2]; for(int i=0;i<16;i++){pipe2(pr[i],O_NONBLOCK); fcntl(pr[i][1],F_SETPIPE_SZ,MIB);}
  char *buf=aligned_alloc(4096,256<<10); uint32_t acc=0;
  for(int r=0;r<reps;r++) for(int mode=0;mode<2;mode++){
    int fd=open(path,O_RDWR|O_CREAT|O_TRUNC,0600);
    double c0=now(CLOCK_PROCESS_CPUTIME_ID), crc=0;
    for(size_t off=0; off<N; off+=16*(size_t)MIB){
      for(int i=0;i<16;i++){struct iovec v={mem+off+i*(size_t)MIB,MIB}; vmsplice(pr[i][1],&v,1,SPLICE_F_NONBLOCK);}
      for(int i=0;i<16;i++){ loff_t o=off+i*(size_t)MIB; size_t left=MIB; while(left){ssize_t n=splice(pr[i][0],NULL,fd,&o,left,0); left-=n;}
        if(mode==1){ double t=now(CLOCK_PROCESS_CPUTIME_ID); for(size_t p=0;p<MIB;p+=256<<10){pread(fd,buf,256<<10,off+i*(size_t)MIB+p); acc=tsnap_crc32(acc,buf,256<<10);} crc+=now(CLOCK_PROCESS_CPUTIME_ID)-t; } }
    }
    double sp=now(CLOCK_PROCESS_CPUTIME_ID)-c0-crc;
    if(mode==0){ double t=now(CLOCK_PROCESS_CPUTIME_ID); for(size_t p=0;p<N;p+=256<<10){pread(fd,buf,256<<10,p); acc=tsnap_crc32(acc,buf,256<<10);} crc=now(CLOCK_PROCESS_CPUTIME_ID)-t; }
    close(fd); unlink(path);
    if(r>0) printf("%s: splice+vmsplice cpu %.0f ms, read-back+crc cpu %.0f ms\\n", mode?"crc right after each MiB":"crc after the whole copy", sp*1e3, crc*1e3);
  }
  return acc==1234567;
}
`;

function main(): void {
  const work = mkdtempSync(join(tmpdir(), 'tsnap-bench-splice-'));
  try {
    writeFileSync(join(work, 'files.c'), FILES);
    writeFileSync(join(work, 'crc.c'), CRC);
    execFileSync('gcc', ['-O2', '-pthread', '-o', join(work, 'files'), join(work, 'files.c')]);
    execFileSync('gcc', ['-O2', '-o', join(work, 'crc'), join(work, 'crc.c'), CRC_LIB, `-Wl,-rpath,${join(CRC_LIB, '..')}`]);
    const run = (bin: string) => execFileSync(RT ? 'chrt' : bin, RT ? ['-f', '10', bin, String(SIZE_MIB), String(REPS + 1)] : [String(SIZE_MIB), String(REPS + 1)], { env: { ...process.env, OUT: OUT_ROOT } }).toString();
    const load = readFileSync('/proc/loadavg', 'utf8').trim();
    console.log(JSON.stringify({ sizeMiB: SIZE_MIB, reps: REPS, realTime: RT, outDir: OUT_ROOT, load, files: run(join(work, 'files')).trim().split('\n'), crc: run(join(work, 'crc')).trim().split('\n') }, null, 2));
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

main();

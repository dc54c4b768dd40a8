/*
 * What SQLite's way of writing its write-ahead log costs in CPU (BENCHMARKS.md, "Issue #17,
 * sixth sitting"). SQLite writes each log frame with two pwrite calls: a 24-byte frame
 * header, then the 4096-byte page. This writes `FRAMES` frames per commit that way (mode 0)
 * or as one pwrite of the same bytes (mode 1), with an fdatasync every second commit, and
 * prints the process CPU time per frame. Local file only; delete it afterwards.
 *
 *   cc -O2 scripts/wal_frame_writes.c -o /tmp/wal_frame_writes
 *   for i in 1 2 3; do /tmp/wal_frame_writes 0 /tmp/f.wal; /tmp/wal_frame_writes 1 /tmp/f.wal; done
 *   rm /tmp/f.wal
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { FRAMES = 12, COMMITS = 20000, HEADER = 24, PAGE = 4096, FRAME = HEADER + PAGE };

static double cpu_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s 0|1 FILE\n", argv[0]);
        return 2;
    }
    int coalesce = atoi(argv[1]);
    int fd = open(argv[2], O_RDWR | O_CREAT, 0644);
    if (fd < 0) {
        perror("open");
        return 1;
    }
    static char header[HEADER], page[PAGE], commit[FRAMES * FRAME];
    memset(header, 1, sizeof header);
    memset(page, 2, sizeof page);
    long offset = 32; /* after the log's own header, as in SQLite */
    double start = cpu_seconds();
    for (int c = 0; c < COMMITS; c++) {
        if (offset > 4L << 20) offset = 32; /* the log restarts after a checkpoint */
        if (coalesce) {
            for (int f = 0; f < FRAMES; f++) {
                memcpy(commit + f * FRAME, header, HEADER);
                memcpy(commit + f * FRAME + HEADER, page, PAGE);
            }
            if (pwrite(fd, commit, sizeof commit, offset) != (ssize_t)sizeof commit) return 1;
            offset += sizeof commit;
        } else {
            for (int f = 0; f < FRAMES; f++) {
                if (pwrite(fd, header, HEADER, offset) != HEADER) return 1;
                if (pwrite(fd, page, PAGE, offset + HEADER) != PAGE) return 1;
                offset += FRAME;
            }
        }
        if (c % 2 == 0 && fdatasync(fd) != 0) return 1;
    }
    printf("%s: %.2f us of CPU per frame\n", coalesce ? "one pwrite per commit" : "two pwrites per frame",
           (cpu_seconds() - start) * 1e6 / ((double)COMMITS * FRAMES));
    close(fd);
    return 0;
}

/* The C side of src/decode/gzip.rs: ISA-L's inflate behind four calls whose arguments are
 * plain pointers and integers. Rust never sees struct inflate_state, whose layout changes
 * between ISA-L releases: its size and fields come from the header this file is compiled
 * against, which is the one of the library it is linked with. */
#include <stdint.h>
#include <stdlib.h>
#include <isa-l/igzip_lib.h>

/* A decoder for one gzip member (header parsed, CRC-32 and length checked), or NULL. */
struct inflate_state *dupmirror_gzip_new(void)
{
	struct inflate_state *state = malloc(sizeof *state);
	if (state != NULL) {
		isal_inflate_init(state);
		state->crc_flag = ISAL_GZIP;
	}
	return state;
}

/* Ready for the next member of a multi-member file. */
void dupmirror_gzip_restart(struct inflate_state *state)
{
	isal_inflate_reset(state);
	state->crc_flag = ISAL_GZIP;
}

void dupmirror_gzip_free(struct inflate_state *state)
{
	free(state);
}

/* Inflates from in[0..in_len) into out[0..out_len). Returns isal_inflate's status (< 0: bad
 * data) and tells how much input it took (it may keep some internally), how much output it
 * gave, and whether the member ended, trailer checked. Input after the member's end is
 * left unconsumed. */
int dupmirror_gzip_inflate(struct inflate_state *state, const uint8_t *in, uint32_t in_len,
			   uint8_t *out, uint32_t out_len, uint32_t *consumed, uint32_t *produced,
			   int *member_done)
{
	state->next_in = (uint8_t *)in;
	state->avail_in = in_len;
	state->next_out = out;
	state->avail_out = out_len;
	int status = isal_inflate(state);
	*consumed = in_len - state->avail_in;
	*produced = out_len - state->avail_out;
	*member_done = state->block_state == ISAL_BLOCK_FINISH;
	return status;
}

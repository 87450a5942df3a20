/* evaluate.h — loss over a whole dataset with the forward only (no gradients, no update).
 *
 * Used by `unswag eval` and by the trainer's --eval-data. Rows are taken in file order, batch at
 * a time; each row is cut to seq tokens (or padded: padding positions count nothing); the target
 * of position s is the label of position s+1, as in training. The last batch is padded with
 * empty rows, so every row counts exactly once. */
#ifndef US_EVALUATE_H
#define US_EVALUATE_H

#include "data/tokens.h"
#include "model/model.h"

/* The model must be prepared (us_model_prepare) for at least batch*seq tokens. loss_sum and
 * counted receive the summed token loss and the number of counted tokens. logits_out
 * (optional): host f32 [ds->n, seq, vocab], row r of the dataset at logits_out[r*seq*vocab]. */
us_status us_eval_dataset(us_model *m, const us_token_dataset *ds, int batch, int seq, float *logits_out,
                          double *loss_sum, long *counted, us_err *e);

#endif

/* Generated source 32 of the steps context. */
int f32(int x) { return x * 32 + 1; }

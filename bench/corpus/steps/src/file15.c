/* Generated source 15 of the steps context. */
int f15(int x) { return x * 15 + 1; }
